"""The live service against its own OpenAPI spec (issue 18), with schemathesis: for every
operation, requests generated from the spec (valid ones, and for /segment invalid ones too) are
sent to a real server on 127.0.0.1 and each response is checked for no 5xx, a documented status, a
documented content type and a body matching the documented schema. Schemathesis writes real
images for image/* bodies, and explicit images in every response format check each 200 body."""

from __future__ import annotations

import base64
import datetime
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from helpers import image_bytes, metric, running_server, scene, small_net
from service.backends.pytorch import TorchBackend

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 100  # per generation mode; bounds the whole file to well under a minute
OPERATIONS = {"POST /segment", "GET /v1/models", "GET /v1/models/{name}", "GET /healthz", "GET /readyz", "GET /metrics"}
OPERATIONS |= {"GET /v1/stats"}  # the web page's live panel (service.web)
OPERATIONS |= {  # the Open Inference Protocol (service.oip)
    "GET /v2", "GET /v2/health/live", "GET /v2/health/ready",
    *(f"GET /v2/models/{{name}}{v}{tail}" for v in ("", "/versions/{version}") for tail in ("", "/ready", "/config")),
    "POST /v2/models/{name}/infer", "POST /v2/models/{name}/versions/{version}/infer",
    "POST /v2/repository/index", "POST /v2/repository/models/{name}/load", "POST /v2/repository/models/{name}/unload",
}  # fmt: skip


@pytest.fixture(scope="module")
def served():
    with running_server(TorchBackend(net=small_net()), max_batch_size=4, max_queue_delay_ms=5) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served + "/openapi.json")


def requests_counted(url: str, endpoint: str) -> float:
    return metric(httpx.get(url + "/metrics").text, "deeplab_requests_total", endpoint=endpoint)


def call_counted(case, url: str):
    """Send ``case``, validate the response, and prove it reached this server: the response has
    the service's request id, and the server's request counter for the endpoint moved (it is
    counted just after the response is sent, so poll it briefly)."""
    before = requests_counted(url, case.path)
    response = case.call_and_validate(base_url=url, checks=CHECKS)
    assert response.headers.get("x-request-id"), "the response did not come through the service"
    deadline = time.monotonic() + 10
    while requests_counted(url, case.path) < before + 1:
        assert time.monotonic() < deadline, f"the server never counted {case.method} {case.path}"
        time.sleep(0.01)
    return response


def test_the_spec_lists_every_operation(api_schema):
    labels = {op.ok().label for op in api_schema.get_all_operations()}
    assert labels == OPERATIONS, "a new operation? add it to OPERATIONS, so it is fuzzed below"


# Negative cases need something to make invalid: only /segment takes parameters and a body. Its
# negative cases include unknown query parameters, which the service rightly ignores (200), so the
# checks below are the spec's, not "every negative case is refused".
PLAN = [(op, GenerationMode.POSITIVE) for op in sorted(OPERATIONS)] + [("POST /segment", GenerationMode.NEGATIVE)]


@pytest.mark.parametrize("label, mode", PLAN, ids=[f"{op} {mode.value}" for op, mode in PLAN])
def test_every_operation_answers_as_its_spec_says(api_schema, served, label, mode):
    """Schemathesis' Hypothesis strategy for the operation (``schemathesis.pytest.from_fixture``
    would do the same, but it reads a private pytest attribute that pytest 9 removed)."""
    method, path = label.split(" ")
    sent = []

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
    @given(api_schema[path][method].as_strategy(generation_mode=mode))
    def fuzz(case):
        sent.append(call_counted(case, served).status_code)

    fuzz()
    assert sent, "schemathesis sent nothing"
    if label == "POST /segment":  # its images (it writes real ones for image/*) and its junk
        assert 200 in sent and any(400 <= s < 500 for s in sent), Counter(sent)


IMAGE = image_bytes(scene(1, (40, 30)))


@pytest.mark.parametrize("fmt, mask", [("png", "none"), ("raw", "none"), ("overlay", "none"), ("json", "none"), ("json", "rle")])
@pytest.mark.parametrize("media_type", ["image/png", "multipart/form-data"])
def test_a_real_image_is_answered_as_documented(api_schema, served, fmt, mask, media_type):
    body = IMAGE if media_type == "image/png" else {"image": [IMAGE]}
    case = api_schema["/segment"]["POST"].Case(body=body, media_type=media_type, query={"format": fmt, "mask": mask})
    response = call_counted(case, served)
    assert response.status_code == 200, response.text
    if fmt == "raw":
        assert len(response.content) == 40 * 30 and np.frombuffer(response.content, np.uint8).max() < 19
    if fmt == "json":
        assert response.json()["width"] == 40 and ("mask" in response.json()) == (mask == "rle")


@pytest.mark.parametrize("binary", [False, True], ids=["JSON outputs", "binary outputs"])
def test_a_real_inference_request_is_answered_as_documented(api_schema, served, binary):
    """The fuzzed names above are unknown models (404): one real request to the served one."""
    name = httpx.get(served + "/v1/models").json()["default"]
    body = {
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(IMAGE).decode()]}],
        "outputs": [{"name": "LABELS", "parameters": {"binary_data": binary}}],
    }
    case = api_schema["/v2/models/{name}/infer"]["POST"].Case(path_parameters={"name": name}, body=body, media_type="application/json")
    response = call_counted(case, served)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == [("application/octet-stream" if binary else "application/json")]  # schemathesis: a list


@pytest.mark.parametrize("fmt, field", [("png", "png_base64"), ("raw", "raw_base64"), ("overlay", "jpeg_base64"), ("json", None)])
def test_several_images_are_answered_as_documented(api_schema, served, fmt, field):
    """Repeated ``image`` fields: the JSON answer with one entry per image, also one refused."""
    case = api_schema["/segment"]["POST"].Case(body={"image": [IMAGE, b"junk", IMAGE]}, media_type="multipart/form-data", query={"format": fmt})
    response = call_counted(case, served)
    assert response.status_code == 200, response.text
    good, junk, _ = response.json()["results"]
    assert good["width"] == 40 and (field in good if field else not any(k.endswith("_base64") for k in good))
    assert (junk["index"], junk["status"], junk["error"]) == (1, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "status, content_type, body, failure",
    [
        (500, "application/json", b'{"error": "internal_error", "detail": "x"}', "Server error"),
        (418, "application/json", b'{"error": "teapot", "detail": "x"}', "Undocumented status code"),
        (200, "text/plain", b"alive", "Undocumented Content-Type"),
        (503, "application/json", b'{"error": 7}', "Response violates schema"),
    ],
)
def test_the_checks_fail_a_response_the_spec_does_not_allow(api_schema, status, content_type, body, failure):
    """The checks above can fail: answers the service must never give, validated as if it had."""
    case = api_schema["/readyz"]["GET"].Case()
    request = httpx.Request("GET", "http://127.0.0.1/readyz")
    response = httpx.Response(status, headers={"content-type": content_type}, content=body, request=request)
    response.elapsed = datetime.timedelta(0)  # what a transport sets
    with pytest.raises(schemathesis.errors.FailureGroup) as raised:
        case.validate_response(response, checks=CHECKS)
    assert failure in [str(f).splitlines()[0] for f in raised.value.exceptions]
