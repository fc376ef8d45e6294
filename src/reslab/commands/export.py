"""reslab export: a checkpoint to ONNX, torch.export, TorchScript, safetensors or a hub folder."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export to ONNX, torch.export (.pt2), TorchScript (deprecated), "
                                   "safetensors or a hub folder (timm's layout), with a parity check")
    parser.add_argument("checkpoint", help="a run folder (uses its best checkpoint), a .pt file or a hub folder "
                        "(timm's layout)")
    parser.add_argument("--format", choices=("onnx", "pt2", "torchscript", "safetensors", "hub"), required=True,
                        help="pt2: a torch.export program, any batch size; torchscript: PyTorch deprecates it")
    parser.add_argument("--output", help="file to write, or folder for hub (default: the run's name with .onnx, "
                        ".pt2, .pt, .safetensors or -hub, here)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..inference.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.format, args.output).describe())
    return 0
