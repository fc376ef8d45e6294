"""reslab serve: a local web page to classify uploaded images and see Grad-CAM."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="a local web page: upload an image, see predictions and Grad-CAM")
    parser.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file or a hub folder "
                        "(timm's layout)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="multi-label checkpoints: a label counts over this")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..inference.server import serve

    return serve(args.checkpoint, host=args.host, port=args.port, top_k=args.top_k, threshold=args.threshold,
                 max_upload_mb=args.max_upload_mb, device=args.device)
