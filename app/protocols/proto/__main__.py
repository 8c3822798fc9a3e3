"""Regenerate inference_pb2.py and inference_pb2_grpc.py from inference.proto."""

from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).parent

if __name__ == "__main__":
    status = protoc.main(["protoc", f"-I{HERE}", f"--python_out={HERE}",
                          f"--grpc_python_out={HERE}", str(HERE / "inference.proto")])
    # The generated service module imports its messages as a top-level module.
    service = HERE / "inference_pb2_grpc.py"
    service.write_text(service.read_text().replace(
        "import inference_pb2 as", "from app.protocols.proto import inference_pb2 as"))
    raise SystemExit(status)
