"""Candidates served by a model server, called over HTTP.

References (the ``model`` of a candidate):

- ``v2+http://host:8080/v2/models/NAME[/versions/V]``: the Open Inference Protocol
  (KServe V2, Triton, MLServer, Seldon Core 2), ``POST .../infer``;
- ``v1+http://host:8080/v1/models/NAME``: KServe V1, ``POST .../NAME:predict``.

``https`` works the same way. Query parameters after the URL say how a mirrored
input becomes a tensor or an instance, and are not sent to the server:

- ``features=a,b,c``: the input's fields in this order make one row (without it a
  row is the input's ``features`` list);
- ``input=NAME`` and ``datatype=FP64`` (V2): the request tensor's name and type;
- ``outputs=a,b`` (V2): the output tensors asked for;
- ``host=NAME``: the ``Host`` header (a KServe service behind an ingress gateway);
- ``token_env=VAR``: a bearer token read from the environment variable ``VAR``.

An input that already is a protocol payload (V2: an ``inputs`` list of tensors; V1:
an ``instances`` list, as the payload-log ingest records them) is sent as it is.

A batch of inputs is one HTTP call: V2 tensors are concatenated along their first
dimension, V1 instances are listed together, and the answer is split back by rows.
An HTTP status of 400 or more, a body that is not the protocol's, or a batch the
server answers with the wrong number of rows raises ``RemoteModelError`` with the
server's reason; the worker then re-runs the batch one input at a time, so only the
inputs at fault are recorded as errors. Connections are pooled (one pool per
candidate, as many connections as its call slots). Nothing is retried behind the
caller's back but one case: a pooled keep-alive connection that the server had
already closed or reset (its idle timeout, or after answering an error) fails the
moment it is used, without an answer; that call is sent once more on a new
connection, because the input is not at fault and inference does not change state.
The recorded latency then includes the failed attempt (a few milliseconds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson

from shadowline.errors import ModelLoadError

SCHEMES = ("v2+http", "v2+https", "v1+http", "v1+https")
# What is kept of an error body in the recorded error.
_REASON_CHARS = 300


class RemoteModelError(Exception):
    """The model server refused a call or answered outside its protocol."""


@dataclass(frozen=True)
class RemoteRef:
    """A parsed remote model reference."""

    protocol: str  # "v1" or "v2"
    url: str  # where predictions are POSTed
    model: str
    features: tuple[str, ...] | None = None
    input_name: str = "input-0"
    datatype: str = "FP64"
    outputs: tuple[str, ...] = ()
    host: str | None = None
    token_env: str | None = None


def is_remote(ref: str) -> bool:
    """Whether a model reference names a model server."""
    return ref.split("://", 1)[0] in SCHEMES and "://" in ref


def parse_ref(ref: str) -> RemoteRef:
    """Parse ``v2+http://…`` / ``v1+http://…``; raises ``ValueError`` saying what is wrong."""
    scheme, _, _ = ref.partition("://")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    protocol, http = scheme.split("+")
    parts = urlsplit(ref.replace(scheme, http, 1))
    if not parts.hostname:
        raise ValueError(f"{ref!r} has no host")
    segments = [s for s in parts.path.split("/") if s]
    if protocol == "v2":
        # /v2/models/NAME or /v2/models/NAME/versions/V
        ok = len(segments) in (3, 5) and segments[:2] == ["v2", "models"]
        if not ok or (len(segments) == 5 and segments[3] != "versions"):
            raise ValueError(
                f"{ref!r}: expected a path /v2/models/NAME or /v2/models/NAME/versions/VERSION"
            )
        path = "/" + "/".join(segments) + "/infer"
    else:
        if len(segments) != 3 or segments[:2] != ["v1", "models"]:
            raise ValueError(f"{ref!r}: expected a path /v1/models/NAME")
        path = "/" + "/".join(segments) + ":predict"
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    known = {"features", "input", "datatype", "outputs", "host", "token_env"}
    if unknown := sorted(set(query) - known):
        raise ValueError(f"{ref!r}: unknown parameter(s) {unknown}; known: {sorted(known)}")

    def one(name: str) -> str | None:
        values = query.get(name)
        if values is None:
            return None
        if len(values) != 1 or not values[0]:
            raise ValueError(f"{ref!r}: parameter {name!r} needs exactly one non-empty value")
        return values[0]

    def names(name: str) -> tuple[str, ...] | None:
        value = one(name)
        if value is None:
            return None
        out = tuple(v.strip() for v in value.split(","))
        if not all(out):
            raise ValueError(f"{ref!r}: parameter {name!r} has an empty name in {value!r}")
        return out

    url = urlunsplit((http, parts.netloc, path, "", ""))
    return RemoteRef(
        protocol=protocol,
        url=url,
        model=segments[2],
        features=names("features"),
        input_name=one("input") or "input-0",
        datatype=(one("datatype") or "FP64").upper(),
        outputs=names("outputs") or (),
        host=one("host"),
        token_env=one("token_env"),
    )


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item))
    return out


def _reshape(flat: list[Any], shape: Sequence[int]) -> Any:
    # One row's values in the row's own shape (trailing dimensions of the tensor).
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _row_value(flat: list[Any], trailing: Sequence[int]) -> Any:
    # A row holding one element is that element: a classifier's label, a score.
    if math.prod(trailing) == 1:
        return flat[0]
    return _reshape(flat, trailing)


def v2_outputs(body: Any, rows: Sequence[int]) -> list[Any]:
    """Split a V2 response into one output per request (``rows[i]`` rows each).

    A request of one row gets that row's value (a single output tensor) or a dict of
    output name to value (several); a request of several rows gets a list of them.
    The payload-log ingest records production's outputs the same way, so both sides
    of a comparison have one shape.
    """
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise RemoteModelError("V2 response has no 'outputs' list")
    total = sum(rows)
    split: dict[str, list[Any]] = {}
    for tensor in body["outputs"]:
        if not isinstance(tensor, dict) or "name" not in tensor or "data" not in tensor:
            raise RemoteModelError("V2 output tensor without 'name' and 'data'")
        shape = tensor.get("shape") or [len(_flatten(tensor["data"]))]
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise RemoteModelError(f"V2 output {tensor['name']!r} has shape {shape!r}")
        if shape[0] != total:
            raise RemoteModelError(
                f"V2 output {tensor['name']!r} has {shape[0]} rows for {total} input rows"
            )
        flat = _flatten(tensor["data"])
        step = math.prod(shape[1:])
        if len(flat) != total * step:
            raise RemoteModelError(
                f"V2 output {tensor['name']!r}: {len(flat)} values for shape {shape}"
            )
        values = [_row_value(flat[i * step : (i + 1) * step], shape[1:]) for i in range(total)]
        split[str(tensor["name"])] = values
    if not split:
        raise RemoteModelError("V2 response has no output tensors")
    names = list(split)
    out: list[Any] = []
    start = 0
    for n in rows:
        if len(names) == 1:
            per = split[names[0]][start : start + n]
        else:
            per = [{k: split[k][start + j] for k in names} for j in range(n)]
        out.append(per[0] if n == 1 else per)
        start += n
    return out


def v1_outputs(body: Any, rows: Sequence[int]) -> list[Any]:
    """Split a V1 response's ``predictions`` into one output per request, as
    ``v2_outputs`` does."""
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        raise RemoteModelError("V1 response has no 'predictions' list")
    preds = body["predictions"]
    if len(preds) != sum(rows):
        n = sum(rows)
        raise RemoteModelError(f"V1 response has {len(preds)} predictions for {n} instances")
    out: list[Any] = []
    start = 0
    for n in rows:
        out.append(preds[start] if n == 1 else preds[start : start + n])
        start += n
    return out


class RemoteModel:
    """A model behind an HTTP model server, as a ``predict_batch`` the worker calls."""

    def __init__(self, ref: str, *, timeout_s: float = 1.0, max_connections: int = 16) -> None:
        import urllib3

        try:
            self.ref = parse_ref(ref)
        except ValueError as exc:
            raise ModelLoadError(f"model {ref!r}: {exc}") from None
        self.name = ref
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.ref.host:
            headers["Host"] = self.ref.host
        if self.ref.token_env:
            token = os.environ.get(self.ref.token_env)
            if not token:
                raise ModelLoadError(
                    f"model {ref!r}: token_env {self.ref.token_env!r} is not set in the environment"
                )
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        # block=True: more concurrent calls than connections wait for one instead of
        # opening (and dropping) extra connections; the worker's call slots bound them.
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=max_connections, block=True, retries=False
        )
        # a connection closed or reset under the request (no answer came): not a read
        # timeout, which is urllib3's ReadTimeoutError and is never sent again
        self._dropped = urllib3.exceptions.ProtocolError

    def _send(self, payload: bytes) -> Any:
        return self._pool.request(
            "POST", self.ref.url, body=payload, headers=self._headers,
            timeout=self._timeout, preload_content=True, redirect=False,
        )  # fmt: skip

    def _rows(self, item: dict[str, Any], i: int) -> list[Any]:
        if self.ref.features is not None:
            try:
                return [item[f] for f in self.ref.features]
            except KeyError as exc:
                raise KeyError(f"input {i} lacks feature {exc.args[0]!r}") from None
        features = item.get("features")
        if isinstance(features, list):
            return features
        if self.ref.protocol == "v1":
            return item  # type: ignore[return-value]  # a V1 instance may be an object
        raise ValueError(
            f"input {i} has no 'features' list (fields: {sorted(item)[:10]}); set "
            "?features=a,b,... on the model reference"
        )

    def _v2_body(self, inputs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
        if all(isinstance(item.get("inputs"), list) for item in inputs):
            return _merge_v2(inputs)
        matrix = [self._rows(item, i) for i, item in enumerate(inputs)]
        width = {len(r) for r in matrix}
        if len(width) != 1:
            raise ValueError(f"inputs have different numbers of features: {sorted(width)}")
        tensor = {
            "name": self.ref.input_name,
            "shape": [len(matrix), width.pop()],
            "datatype": self.ref.datatype,
            "data": [v for row in matrix for v in row],
        }
        body: dict[str, Any] = {"inputs": [tensor]}
        if self.ref.outputs:
            body["outputs"] = [{"name": n} for n in self.ref.outputs]
        return body, [1] * len(inputs)

    def _v1_body(self, inputs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
        instances: list[Any] = []
        rows: list[int] = []
        for i, item in enumerate(inputs):
            given = item.get("instances")
            if isinstance(given, list) and self.ref.features is None:
                instances.extend(given)
                rows.append(len(given))
            else:
                instances.append(self._rows(item, i))
                rows.append(1)
        return {"instances": instances}, rows

    def predict_batch(self, inputs: Sequence[dict[str, Any]]) -> list[Any]:
        v2 = self.ref.protocol == "v2"
        body, rows = self._v2_body(inputs) if v2 else self._v1_body(inputs)
        payload = orjson.dumps(body)
        try:
            resp = self._send(payload)
        except self._dropped:
            # the pool has discarded the dead connection: this opens a new one
            resp = self._send(payload)
        data = resp.data
        if resp.status >= 400:
            raise RemoteModelError(
                f"HTTP {resp.status} from {self.ref.url}: {_reason(data) or resp.reason}"
            )
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise RemoteModelError(
                f"HTTP {resp.status} from {self.ref.url} is not JSON: {data[:80]!r}"
            ) from None
        return v2_outputs(answer, rows) if v2 else v1_outputs(answer, rows)


def _reason(data: bytes) -> str:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data[:_REASON_CHARS].decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                return str(body[key])[:_REASON_CHARS]
    return str(body)[:_REASON_CHARS]


def _merge_v2(inputs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[int]]:
    """Concatenate V2 requests along the first dimension (same tensors, names, types
    and trailing shapes), with each request's row count to split the answer."""
    first = inputs[0]["inputs"]
    layout = [(t.get("name"), t.get("datatype"), tuple(t.get("shape") or ())[1:]) for t in first]
    merged = [
        {"name": n, "datatype": d, "shape": [0, *s], "data": []} for n, d, s in layout
    ]  # fmt: skip
    rows: list[int] = []
    for i, item in enumerate(inputs):
        tensors = item["inputs"]
        got = [(t.get("name"), t.get("datatype"), tuple(t.get("shape") or ())[1:]) for t in tensors]
        if got != layout:
            raise ValueError(f"input {i}'s tensors {got} differ from input 0's {layout}")
        counts = {(t.get("shape") or [0])[0] for t in tensors}
        if len(counts) != 1:
            raise ValueError(f"input {i}'s tensors have different first dimensions {counts}")
        n = counts.pop()
        rows.append(n)
        for out, t in zip(merged, tensors, strict=True):
            out["shape"][0] += n
            out["data"].extend(_flatten(t["data"]))
    body: dict[str, Any] = {"inputs": merged}
    if len(inputs) == 1:
        # One request is sent as it came (its parameters and requested outputs too).
        body = dict(inputs[0])
    elif "outputs" in inputs[0]:
        body["outputs"] = inputs[0]["outputs"]
    return body, rows
