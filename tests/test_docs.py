"""The documents and the service say the same thing: the README's tables, limits, stages and quoted messages, the
OpenAPI description's arguments and answers, and the messages a newcomer meets (checked on the real gateway)."""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import errors
from gateway.predict import fetch
from gateway.vision import preprocess
from gateway.api.forms import MAX_FIELD_BYTES, MAX_FIELDS
from gateway.api.openapi import SPEC
from gateway.modelcard import UNTRAINED_WARNING
from gateway.predict.responses import WARNING_HEADER
from gateway.arguments import (
    ALIASES,
    ARGUMENTS,
    BOOLEAN_HELP,
    BOOLEAN_WORDS,
    CONFIDENCE_RANGE,
    FORMATS,
    IOU_RANGE,
    MAX_DET_RANGE,
    SIZE_RANGE,
    parse_args,
)
from gateway.settings import FORM_OVERHEAD, Settings
from tests.conftest import Gateway, start_gateway, stop_gateway

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PREDICT_PATHS = {"/v1/predict/{model_id}": "image", "/api/models/{model_id}/predict": "file", "/": "file"}


def _section(text: str, title: str) -> str:
    """The text under a heading (any level), up to the next heading of that level or above."""
    level, _, _ = title.partition(" ")
    body = text.split(f"\n{title}\n", 1)[1]
    return re.split(rf"\n#{{1,{len(level)}}} ", body, maxsplit=1)[0]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _stages(header: str) -> set[str]:
    return {part.split(";")[0].strip() for part in header.split(",") if part.strip()}


# --- README and OpenAPI against the code (pure) ----------------------------------------------------------------------


class _Reads(Mapping[str, str]):
    """An empty form that records every name read from it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_openapi_documents_exactly_the_arguments_the_routes_read() -> None:
    reads = _Reads()
    parse_args(reads)
    assert reads.names == set(ARGUMENTS) | set(ALIASES)
    for path, part in PREDICT_PATHS.items():
        operation = SPEC["paths"][path]["post"]
        accepted = reads.names | ({"model"} if path == "/" else set())  # "/" names the model in a field
        query = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        assert query == accepted, path
        assert set(form) - {part} == accepted, path
        assert form[part]["maxItems"] == Settings().max_images


def test_openapi_ranges_and_formats_are_the_validators() -> None:
    args = SPEC["paths"]["/v1/predict/{model_id}"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = args["properties"]
    for name, (low, high) in {
        "size": SIZE_RANGE,
        "confidence": CONFIDENCE_RANGE,
        "iou": IOU_RANGE,
        "max_det": MAX_DET_RANGE,
    }.items():
        assert (props[name]["minimum"], props[name]["maximum"]) == (low, high), name
    assert set(props["format"]["enum"]) == set(FORMATS)
    assert all(BOOLEAN_HELP in props[name]["description"] for name in ("normalize", "agnostic"))


def test_openapi_documents_the_image_answers_and_headers() -> None:
    media = {f"image/{kind}" for kind in FORMATS.values() if kind != "json"}
    for path in PREDICT_PATHS:
        ok = SPEC["paths"][path]["post"]["responses"]["200"]
        assert media | {"application/json"} <= set(ok["content"]), path
        assert {"Server-Timing", WARNING_HEADER} <= set(ok["headers"]), path


def test_readme_argument_tables_are_the_accepted_arguments() -> None:
    section = _section(README, "### Arguments")
    rows = dict(re.findall(r"^\| `(\w+)`\s*\|(.*)$", section, flags=re.M))
    assert set(rows) == set(ARGUMENTS)
    for name, (low, high) in {
        "size": SIZE_RANGE,
        "confidence": CONFIDENCE_RANGE,
        "iou": IOU_RANGE,
        "max_det": MAX_DET_RANGE,
    }.items():
        assert f"{low}–{high}" in rows[name], name
    assert BOOLEAN_HELP in rows["normalize"]
    assert all(f"`{spelling}`" in rows["format"] for spelling in FORMATS)
    for alias, name in ALIASES.items():
        assert f"`{alias}` (= `{name}`)" in README


def test_readme_error_table_has_every_status_the_service_answers() -> None:
    table = _section(README, "### Errors")
    documented = {int(code) for code in re.findall(r"^\| (\d{3}) \|", table, flags=re.M)}
    raised = {cls.status for cls in errors.GatewayError.__subclasses__()}
    assert documented == raised | {405}  # 405 comes from the router (a method the route doesn't take)
    formats = {w for w in re.findall(r"[A-Za-z]+", preprocess.SUPPORTED) if w[0].isupper()}
    row_415 = re.search(r"^\| 415 \| [^(]*\(([^)]*)\)", table, flags=re.M)
    assert row_415 and {w for w in re.findall(r"[A-Za-z]+", row_415.group(1)) if w[0].isupper()} == formats


def test_readme_quotes_the_services_own_message() -> None:
    with pytest.raises(errors.UnsupportedMediaType) as caught:
        preprocess.decode(b"plain text, not an image\n", Settings().max_pixels)
    assert f'"message": "{caught.value.message}", "status": 415' in README


def test_readme_security_limits_are_the_codes() -> None:
    security = _flat(_section(README, "## Security"))
    s = Settings()
    mib = s.max_upload_bytes // 2**20
    for phrase in (
        f"request body {mib} MiB + {FORM_OVERHEAD // 1024} KiB of form",
        f"{s.max_pixels / 1e6:g} megapixels per image",
        f"at most {MAX_FIELDS} form fields of {MAX_FIELD_BYTES // 1024} KiB and {s.max_images} files",
        f"{s.max_inflight} predictions in flight",
        f"within {s.body_timeout_s:g} s, and after its first {s.body_grace_s:g} s at {s.body_min_rate / 1024:g} KiB",
        f"at most {s.per_key_inflight} predictions in progress",
        f"inference deadline {s.triton_timeout_s:g} s",
        "ports 80, 443 or ≥ 1024",
        f"(at most {s.url_max_redirects})",
        f"reads at most {mib} MiB",
        f"gives up after {s.url_timeout_s:g} s in total",
    ):
        assert phrase in security, phrase
    allowed = {port for port in range(1, 65536) if fetch._port_allowed(port)}
    assert allowed == {80, 443} | set(range(1024, 65536))


def test_readme_benchmark_numbers_are_the_records() -> None:
    """Every ratio and latency the README quotes is one bench/RESULTS.md recorded."""
    record = (ROOT / "bench" / "RESULTS.md").read_text()
    text = _flat(_section(README, "## Benchmarks"))
    ratios = re.findall(r"(\d+\.\d+)× \(", text)
    assert len(ratios) >= 5
    assert all(f"{r}×" in record for r in ratios), ratios
    recorded = [float(v) for v in re.findall(r"gateway_p50_minus_onnxruntime_p50_ms_c1 \| ([\d.]+)", record)]
    quoted = re.findall(r"latency \+ (\d+(?:\.\d+)?) ms|or \+ (\d+(?:\.\d+)?) ms", text)
    values = [a or b for a, b in quoted]
    assert values
    for v in values:
        decimals = len(v.split(".")[1]) if "." in v else 0
        assert float(v) in {round(r, decimals) for r in recorded}, v
    for gpu in ("505 images/s", "1,716"):
        assert gpu in text and gpu in record


def _readme_stages() -> tuple[set[str], dict[str, str]]:
    """The stages every successful prediction has, and the extra ones with what they are for."""
    sentence = _flat(
        README.split("Successful predictions carry `Server-Timing`", 1)[1].split("Errors and the other", 1)[0]
    )
    always, _, extras = sentence.partition("; also ")
    return set(re.findall(r"`(\w+)`", always)), dict(re.findall(r"`(\w+)` for (?:a |an )?`([^`]+)`", extras))


def test_client_package_needs_only_httpx(tmp_path: Path) -> None:
    """`pip install ./yolo_triton_client` builds, and what it installs imports with nothing but httpx and its deps."""
    import shutil

    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "yolo_triton_client", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run([*pip, "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    declared = (ROOT / "yolo_triton_client" / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \["httpx[^"]*"\]$', declared, flags=re.M)
    allowed = {
        "yolo_triton_client",
        "httpx",
        "httpcore",
        "h11",
        "h2",
        "hpack",
        "hyperframe",
        "anyio",
        "sniffio",
        "idna",
        "certifi",
        "typing_extensions",
        "exceptiongroup",
        "socksio",
        "brotli",
        "_brotli",
        "zstandard",
    }
    import httpx

    site = str(Path(httpx.__file__).parent.parent)  # where httpx is installed (and, here, everything else too)
    code = f"""
import sys
sys.path[:0] = [{str(target)!r}, {site!r}]
ALLOWED = {sorted(allowed)!r}

class Only:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in ALLOWED:
            raise ModuleNotFoundError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Only())
import yolo_triton_client
from yolo_triton_client.sources import load
assert yolo_triton_client.__file__.startswith({str(target)!r}), yolo_triton_client.__file__
client = yolo_triton_client.Client("http://127.0.0.1:9", "yk_x")
client.close()
print(load(b"\\x89PNG\\r\\n\\x1a\\n").shape)  # Pillow is absent: the size stays unknown, no error
print(sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"__main__"}}))
"""
    # -S: no site-packages .pth files (this checkout's editable install), only the two folders above
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shape, loaded = run.stdout.strip().splitlines()
    assert shape == "None"
    assert set(eval(loaded)) <= allowed and "httpx" in loaded  # noqa: S307 - our own subprocess's output


# --- the real gateway -----------------------------------------------------------------------------------------------


def _v2(gw: Gateway, model: str, path: Path, data: dict[str, Any] | None = None) -> requests.Response:
    files = {"file": (path.name, path.read_bytes())}
    return requests.post(
        f"{gw.url}/api/models/{model}/predict", headers={"x-api-key": gw.key}, files=files, data=data, timeout=120
    )


def _message(r: requests.Response, status: int) -> str:
    """The error's message: in the HUB's envelope, or on the Platform's routes in its `{"error"}` body."""
    assert r.status_code == status, r.text
    body = r.json()
    if "error" in body:
        assert set(body) == {"error"}, body
        message: str = body["error"]
    else:
        assert body["success"] is False and body["data"] == {}
        message = body["message"]
    assert message.endswith(".") and ".." not in message, message
    return message


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url_setup(
    triton: Any, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str]]:
    """A gateway that may fetch from 'localhost', and a loopback server with the test images."""
    handler = functools.partial(_Quiet, directory=str(images["bus"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gw = start_gateway(triton, tmp_path_factory.mktemp("gateway-docs-url"), url_allow_hosts="localhost")
    yield gw, f"http://localhost:{server.server_port}"
    stop_gateway(gw)
    server.shutdown()


def test_server_timing_stages_are_the_documented_ones(url_setup: tuple[Gateway, str], images: dict[str, Path]) -> None:
    gw, server = url_setup
    always, extras = _readme_stages()
    assert set(extras) == {"fetch", "render"}
    upload = gw.predict("yolov8n", files={"image": images["bus"].read_bytes()})
    assert upload.status_code == 200 and _stages(upload.headers["server-timing"]) == always
    by_url = gw.predict("yolov8n", data={"url": f"{server}/bus.jpg"})
    assert by_url.status_code == 200, by_url.text
    assert _stages(by_url.headers["server-timing"]) == always | {"fetch"}
    drawn = gw.predict("yolov8n", files={"image": images["bus"].read_bytes()}, data={"format": "png"})
    assert drawn.headers["content-type"] == "image/png" and _stages(drawn.headers["server-timing"]) == always | {
        "render"
    }
    # as documented: errors and the other endpoints carry none
    assert "server-timing" not in gw.predict("yolov8n", data={"size": "1"}).headers
    for path in ("/healthz", "/v1/models", "/openapi.json"):
        assert "server-timing" not in requests.get(f"{gw.url}{path}", timeout=10).headers


def test_v2_metadata_echoes_the_size_used(gateway: Gateway, images: dict[str, Path]) -> None:
    odd = _v2(gateway, "yolov8n", images["bus"], {"imgsz": "33", "details": "true"})
    even = _v2(gateway, "yolov8n", images["bus"], {"imgsz": "64"})
    assert odd.status_code == even.status_code == 200, odd.text
    assert odd.json()["metadata"]["imgsz"] == 64  # 33 rounded up to the stride, as Ultralytics does
    assert odd.json()["images"][0]["results"] == even.json()["images"][0]["results"]


def test_classes_outside_the_model_are_400_naming_its_range(gateway: Gateway, images: dict[str, Path]) -> None:
    bus = {"image": images["bus"].read_bytes()}
    message = _message(gateway.predict("yolov8n", files=bus, data={"classes": "0,80"}), 400)
    assert "'classes'" in message and "80" in message and "0 to 79" in message
    message = _message(gateway.predict("yolov8n-pose", files=bus, data={"classes": "1"}), 400)
    assert "0 to 0" in message
    top = gateway.predict("yolov8n", files=bus).json()["data"][0]["class"]
    kept = gateway.predict("yolov8n", files=bus, data={"classes": f"{top},79"})
    assert kept.status_code == 200 and kept.json()["data"] and {d["class"] for d in kept.json()["data"]} <= {top, 79}
    # classifiers ignore `classes`, as Ultralytics' do (documented)
    assert gateway.predict("yolov8n-cls", files=bus, data={"classes": "5000"}).status_code == 200


def test_yes_no_arguments_take_the_documented_words(gateway: Gateway, images: dict[str, Path]) -> None:
    zidane = {"image": images["zidane"].read_bytes()}
    for yes, no in BOOLEAN_WORDS:
        normal = gateway.predict("yolov8n", files=zidane, data={"normalize": yes.upper()}).json()["data"]
        pixels = gateway.predict("yolov8n", files=zidane, data={"normalize": no}).json()["data"]
        assert normal and pixels and normal[0]["box"]["x2"] <= 1 < pixels[0]["box"]["x2"], (yes, no)
    for name in ("normalize", "agnostic"):
        message = _message(gateway.predict("yolov8n", files=zidane, data={name: "maybe"}), 400)
        assert f"'{name}'" in message and BOOLEAN_HELP in message


def test_messages_name_the_argument_as_sent(gateway: Gateway, images: dict[str, Path]) -> None:
    message = _message(_v2(gateway, "yolov8n", images["bus"], {"imgsz": "2000"}), 400)
    assert "'imgsz'" in message and "'size'" not in message and f"{SIZE_RANGE[0]} to {SIZE_RANGE[1]}" in message
    message = _message(_v2(gateway, "yolov8n", images["bus"], {"conf": "2"}), 400)
    assert "'conf'" in message and "'confidence'" not in message


def test_wrong_method_names_the_methods_the_path_accepts(gateway: Gateway) -> None:
    message = _message(requests.delete(f"{gateway.url}/v1/models", timeout=10), 405)
    assert "DELETE" in message and "GET" in message and "predict" not in message.lower()
    assert "POST" in _message(requests.get(f"{gateway.url}/v1/predict/yolov8n", timeout=10), 405)


def test_form_limit_messages_say_what_to_change(gateway: Gateway, images: dict[str, Path]) -> None:
    tiny = images["tiny"].read_bytes()
    limit = Settings().max_images
    nine = gateway.predict("yolov8n", files=[("image", (f"{i}.png", tiny)) for i in range(limit + 1)])
    message = _message(nine, 400)
    assert message.startswith(f"At most {limit} images") and "Malformed" not in message
    fields = {f"f{i}": "x" for i in range(MAX_FIELDS + 1)}
    message = _message(gateway.predict("yolov8n", files={"image": tiny}, data=fields), 400)
    assert f"at most {MAX_FIELDS}" in message and "Malformed" not in message
    long_field = {"image": (None, "x" * (MAX_FIELD_BYTES + 1))}  # an image sent as text: curl -F "image=<photo.jpg"
    message = _message(gateway.predict("yolov8n", files=long_field), 400)
    assert f"{MAX_FIELD_BYTES // 1024} KiB" in message and "'image' file parts" in message
    r = requests.post(
        f"{gateway.url}/api/models/yolov8n/predict",
        headers={"x-api-key": gateway.key},
        files={"file": (None, "x" * (MAX_FIELD_BYTES + 1))},
        timeout=60,
    )
    assert "'file' file parts" in _message(r, 400)
    broken = requests.post(
        f"{gateway.url}/v1/predict/yolov8n",
        headers={"x-api-key": gateway.key, "content-type": "multipart/form-data"},  # no boundary
        data=b"--x\r\n",
        timeout=60,
    )
    assert _message(broken, 400).startswith("Malformed form data")


def test_predictions_from_untrained_models_say_so(gateway: Gateway, images: dict[str, Path]) -> None:
    bus = {"image": images["bus"].read_bytes()}
    listed = requests.get(f"{gateway.url}/v1/models/yolov8n", timeout=10).json()["data"]
    assert listed["untrained"] and listed["warning"] == UNTRAINED_WARNING
    v1 = gateway.predict("yolov8n", files=bus)
    assert v1.status_code == 200 and v1.headers[WARNING_HEADER] == UNTRAINED_WARNING
    assert set(v1.json()) == {"success", "message", "data"}  # the HUB body itself stays as the HUB has it
    v2 = _v2(gateway, "yolov8n", images["bus"])  # the Platform's contract closes its body: the header says it
    assert "warning" not in v2.json() and v2.headers[WARNING_HEADER] == UNTRAINED_WARNING
    detailed = _v2(gateway, "yolov8n", images["bus"], {"details": "true"})
    assert detailed.json()["warning"] == UNTRAINED_WARNING
    drawn = gateway.predict("yolov8n", files=bus, data={"format": "image"})
    assert drawn.headers["content-type"] == "image/jpeg" and drawn.headers[WARNING_HEADER] == UNTRAINED_WARNING


def test_input_messages_name_every_format_and_the_port_rule(gateway: Gateway) -> None:
    assert preprocess.SUPPORTED in _message(gateway.predict("yolov8n", files={"image": b""}), 422)
    message = _message(gateway.predict("yolov8n", data={"url": "http://8.8.8.8:22/photo.jpg"}), 400)
    assert "port 22" in message and "1024" in message


def test_openapi_documents_the_streams_routes_and_the_fields_a_stream_takes() -> None:
    """Every route of gateway/api/live.py with its methods, and POST /v1/streams's body: the fields request.parse
    reads (the aliases aside), nothing more."""
    from starlette.routing import Route

    from gateway.api import live
    from gateway.live import request

    served: dict[str, set[str]] = {}
    for route in live.routes():
        assert isinstance(route, Route) and route.methods
        served.setdefault(route.path, set()).update(m.lower() for m in route.methods - {"HEAD"})
    assert {path: set(SPEC["paths"].get(path, {})) for path in served} == served
    body = SPEC["paths"]["/v1/streams"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == set(request.PREDICTION) | set(request.OWN)
    assert set(body["required"]) == {"source", "model"}
    resource = SPEC["paths"]["/v1/streams/{stream_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    stream = resource["schema"]["properties"]["data"]
    assert set(stream["required"]) <= set(stream["properties"]), "every field of the resource is described"
