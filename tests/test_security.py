"""Security defaults: no pickle anywhere, remote code off unless asked, the server on loopback,
uploads capped, generated run ids and sanitised labels."""
import ast
import tomllib
from pathlib import Path

import lora_explorer as lx
from lora_explorer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "lora_explorer").rglob("*.py")) + sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def calls(tree, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def test_no_pickle_and_every_torch_load_is_weights_only():
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, path
        for call in calls(tree, "torch.load"):
            flags = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert flags.get("weights_only") == "True", f"{path}:{call.lineno}"


def test_remote_code_is_off_unless_asked():
    assert lx.RunConfig().trust_remote_code is False
    assert build_parser().parse_args(["train"]).trust_remote_code is False
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert ast.unparse(node.value) != "True", f"{path}:{node.value.lineno}"


def test_the_server_listens_on_loopback_only():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["address"] == "127.0.0.1"
    assert "--server.address 0.0.0.0" in (ROOT / "README.md").read_text()  # how to open it up, documented


def test_uploads_are_capped_by_the_server_and_by_the_parser():
    from lora_explorer import data_files

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] * 2**20 == data_files.MAX_BYTES  # Streamlit counts in MiB
    assert data_files.MAX_ROWS <= 200_000


def test_run_ids_are_generated_and_labels_cannot_name_paths(tmp_path):
    run = lx.train(lx.RunConfig(model="toy", steps=2, name="../../etc/passwd\x00\n<b>"), tmp_path)
    assert run.path.parent == tmp_path and "passwd" not in run.id
    assert run.config()["name"] == "../../etc/passwd<b>"  # kept as text only, never as a path
    assert [p.name for p in tmp_path.iterdir()] == [run.id]
