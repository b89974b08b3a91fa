"""Approach (a), the straightforward server a user would write from the seed design:
PyTorch BERT in eager mode (fp32) behind a plain synchronous gRPC server, one request at a
time, the package tokenizer as shipped (pads every text to 128 tokens), no batching across
requests, no quantization. It implements only EncodeInterest of interest.v1.

    python -m bench.seed_server --port 50100
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures

import grpc
import torch
from tokenizers import Tokenizer

from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.contract import backbone_dir
from interest_core.text import clean_text
from interest_model.backbone import InterestEncoder


class SeedService(pb_grpc.InterestGatewayServicer):
    def __init__(self) -> None:
        self.model = InterestEncoder.load()
        self.tokenizer = Tokenizer.from_file(str(backbone_dir() / "tokenizer.json"))

    def EncodeInterest(
        self, request: pb.EncodeInterestRequest, context: grpc.ServicerContext
    ) -> pb.EncodeInterestResponse:
        texts = [clean_text(e.item_text) for e in request.events]
        if not texts or not all(texts):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "every event needs item_text")
        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        with torch.inference_mode():
            vec = self.model(ids, mask).mean(dim=0)
        vec = torch.nn.functional.normalize(vec, dim=0)
        return pb.EncodeInterestResponse(
            embedding=vec.tolist(), dim=int(vec.shape[0]), events_used=len(texts)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_InterestGatewayServicer_to_server(SeedService(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"seed server on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
