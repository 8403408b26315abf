"""/api/v1: the handlers over HTTP, async jobs and batches, subjects and quarantine.

Every processing call goes through ApiService (see service.py): the same Job, Pipeline and
audit record as any other source. Errors are ``{"error": code, "message": sentence}`` with
413 (too big), 415 (not an image we read), 422 (bad params or input), 401 (no or unknown
key) and 403 (key without the scope).
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from facewarden.errors import FacewardenError, InputRejected, UnknownBackend
from facewarden.handlers import base as handlers
from facewarden.storage import quarantine as book
from facewarden.web.auth import ApiKey, KeyStore
from facewarden.web.service import ApiService, safe_name

SESSION_COOKIE = "fw_session"
#: Query/form names that steer the call rather than the handler.
CONTROL = {"async", "response", "image", "image_base64", "filename"}
_STATUS_BY_CODE = {"input.too_large": 413, "input.not_an_image": 415, "input.unsupported_format": 415,
                   "input.empty": 422, "api.no_queue": 503}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def problem(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def status_for(err: FacewardenError) -> int:
    if isinstance(err, UnknownBackend) or err.code.startswith("params.") or err.code == "handler.unknown":
        return 422
    return _STATUS_BY_CODE.get(err.code, 422 if isinstance(err, InputRejected) else 503)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    token = request.cookies.get(SESSION_COOKIE)  # the console's session (SameSite=Strict, HttpOnly)
    if token and request.method not in ("GET", "HEAD") and request.headers.get("x-console") != "1":
        # A cross-site form cannot set a custom header without a CORS preflight we never allow.
        raise ApiError(403, "auth.csrf", "console requests must carry the X-Console header")
    return token


def authenticate(keys: KeyStore, request: Request) -> ApiKey:
    token = bearer(request)
    if not token:
        raise ApiError(401, "auth.missing", "send an API key: Authorization: Bearer <key>")
    key = keys.check(token)
    if key is None:
        raise ApiError(401, "auth.invalid", "the API key is unknown or revoked")
    return key


def scoped(keys: KeyStore, scope: str) -> Callable[[Request], ApiKey]:
    def dependency(request: Request) -> ApiKey:
        key = authenticate(keys, request)
        if not key.allows(scope):
            raise ApiError(403, "auth.scope", f"this key lacks the {scope!r} scope")
        return key

    return dependency


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, Any], bool]:
    """The image and the params of a call: multipart (field ``image``), JSON with
    ``image_base64``, or the raw body; params from the query and form/JSON fields.
    Returns (bytes, filename, params, wants_json)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, "input.too_large", f"the request is {length} bytes, above the limit of {max_bytes}")
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if k not in CONTROL}
    wants_json = request.query_params.get("response") == "json"
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    name = request.query_params.get("filename") or "upload"
    if ctype == "multipart/form-data":
        form = await request.form(max_part_size=max_bytes)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "input.missing", "the multipart body needs a file field named 'image'")
        data = await upload.read()
        name = upload.filename or name
        for k, v in form.multi_items():
            if k not in CONTROL and isinstance(v, str):
                params[k] = v
            if k == "response":
                wants_json = v == "json"
    else:
        data = await _read_limited(request, max_bytes)
        if ctype == "application/json":
            try:
                body = json.loads(data)
                data = base64.b64decode(body.pop("image_base64"), validate=True)
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
                raise ApiError(422, "input.bad_json",
                               'the JSON body needs {"image_base64": "<base64 of the image>"}') from None
            wants_json = wants_json or body.pop("response", "json") == "json"
            name = str(body.pop("filename", name))
            params.update({k: v for k, v in body.items() if k not in CONTROL})
        elif not (ctype.startswith("image/") or ctype in ("application/octet-stream", "")):
            raise ApiError(415, "input.unsupported_media_type",
                           f"send an image (image/*), multipart/form-data or application/json, not {ctype!r}")
    if len(data) > max_bytes:
        raise ApiError(413, "input.too_large", f"the image is {len(data)} bytes, above the limit of {max_bytes}")
    if not data:
        raise ApiError(422, "input.empty", "no image in the request")
    name = safe_name(name, "upload")
    if "." not in name:  # a raw body: name it by its type, so results keep a sensible extension
        name += mimetypes.guess_extension(ctype) or ""
    return data, name, params, wants_json


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "input.too_large", f"the body is above the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _audit_headers(record: dict[str, Any]) -> dict[str, str]:
    out = {"X-Audit-Seq": str(record.get("seq")), "X-Audit-Hash": str(record.get("hash")),
           "X-Job-Id": str(record.get("job_id"))}
    faces = (record.get("facts") or {}).get("faces")
    if faces is not None:
        out["X-Faces"] = str(faces)
    return out


def _params_doc(handler: str) -> list[dict[str, Any]]:
    return [{"name": p["name"], "in": "query", "required": False, "description": f"{p['help']} ({p['type']})",
             "schema": {"type": "string"}} for p in handlers.get(handler).schema.describe()["params"]
            if p["name"] != "subject"]


_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string",
                                                                                 "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "properties": {"image_base64": {"type": "string"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


def build_api(service: ApiService, keys: KeyStore) -> FastAPI:
    settings = service.settings
    max_bytes = min(settings.http.max_body_bytes, settings.limits.max_bytes)
    app = FastAPI(title="facewarden API", version="1", openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None, description="Offline, audited face processing. Auth: `Authorization: Bearer "
                  "<key>` from `facewarden apikeys create NAME --scope ...`.")
    if settings.http.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.http.cors_origins,
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Audit-Seq",
                                                                                            "X-Audit-Hash"])

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return problem(err.status, err.code, err.message, **err.extra)

    @app.exception_handler(FacewardenError)
    async def fw_error(_request: Request, err: FacewardenError) -> JSONResponse:
        return problem(status_for(err), err.code, err.message)

    async def process(request: Request, handler: str, key: ApiKey, extra: dict[str, Any] | None = None) -> Response:
        data, name, params, wants_json = await read_upload(request, max_bytes)
        params.update(extra or {})
        if request.query_params.get("async") in ("1", "true", "yes"):
            job_id = await run_in_threadpool(service.submit, handler, params, data, name, key.name)
            return JSONResponse({"job_id": job_id, "state": "queued", "status_url": f"/api/v1/jobs/{job_id}",
                                 "result_url": f"/api/v1/jobs/{job_id}/result"}, status_code=202)
        result = await run_in_threadpool(service.run_sync, handler, params, data, name, key.name)
        record = result.outcome.record
        headers = _audit_headers(record)
        if result.outcome.outcome not in ("ok", "duplicate"):
            reason = record.get("reason") or {}
            code = reason.get("code", "input.rejected")
            return problem(_STATUS_BY_CODE.get(code, 422), code, reason.get("message", "the image was rejected"),
                           audit={"seq": record.get("seq"), "hash": record.get("hash")})
        outputs = result.outputs
        if outputs and outputs[0][1].startswith("image/") and not wants_json:
            return Response(outputs[0][2], media_type=outputs[0][1], headers=headers)
        body: dict[str, Any] = {"job_id": record.get("job_id"), "outcome": result.outcome.outcome,
                                "facts": record.get("facts"),
                                "audit": {"seq": record.get("seq"), "hash": record.get("hash")}}
        for _key, ctype, blob in outputs:
            if ctype == "application/json" and "result" not in body:
                body["result"] = json.loads(blob)
            else:
                body.setdefault("outputs", []).append({"content_type": ctype,
                                                       "base64": base64.b64encode(blob).decode()})
        return JSONResponse(body, headers=headers)

    def doc(handler: str, summary: str) -> dict[str, Any]:
        return {"summary": summary, "openapi_extra": {**_BODY_DOC, "parameters": [
            *_params_doc(handler),
            {"name": "async", "in": "query", "schema": {"type": "boolean"}, "description": "queue it: 202 + job id"},
            {"name": "response", "in": "query", "schema": {"enum": ["image", "json"]},
             "description": "json: the image as base64 inside JSON"}]}}

    @app.post("/anonymize", **doc("anonymize", "Blur/pixelate every face; returns the image"))
    async def anonymize(request: Request, key: ApiKey = Depends(scoped(keys, "anonymize"))) -> Response:
        return await process(request, "anonymize", key)

    @app.post("/idphoto", **doc("idphoto", "An ID photo (size preset, background colour)"))
    async def idphoto(request: Request, key: ApiKey = Depends(scoped(keys, "idphoto"))) -> Response:
        return await process(request, "idphoto", key)

    @app.post("/detect", **doc("detect", "Faces as boxes and scores (JSON)"))
    async def detect(request: Request, key: ApiKey = Depends(scoped(keys, "anonymize"))) -> Response:
        return await process(request, "detect", key)

    @app.post("/subjects/{subject_id}/photos", **doc("enroll", "Enroll a photo of a subject"))
    async def enroll(subject_id: str, request: Request, key: ApiKey = Depends(scoped(keys, "enroll"))) -> Response:
        return await process(request, "enroll", key, {"subject": subject_id})

    @app.post("/checkin", **doc("verify", "Check in: who is in the photo (or unknown)"))
    async def checkin(request: Request, key: ApiKey = Depends(scoped(keys, "checkin"))) -> Response:
        return await process(request, "verify", key)

    @app.post("/batch", summary="A ZIP of images -> a job whose result is a ZIP", openapi_extra={
        "requestBody": {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        "parameters": [{"name": "handler", "in": "query", "schema": {"type": "string"}, "required": True}]})
    async def batch(request: Request) -> Response:
        handler = request.query_params.get("handler", "anonymize")
        scope = {"verify": "checkin", "detect": "anonymize"}.get(handler, handler)
        key = scoped(keys, scope if scope in ("anonymize", "idphoto", "enroll", "checkin") else "admin")(request)
        archive = await _read_limited(request, settings.http.max_body_bytes)
        params = {k: v for k, v in request.query_params.items() if k not in CONTROL | {"handler"}}
        batch_id = await run_in_threadpool(service.submit_batch, handler, params, archive, key.name)
        return JSONResponse({"job_id": batch_id, "state": "queued", "status_url": f"/api/v1/jobs/{batch_id}",
                             "result_url": f"/api/v1/jobs/{batch_id}/result"}, status_code=202)

    def owned(job_id: str, request: Request) -> dict[str, Any]:
        key = authenticate(keys, request)
        facts = service.owner_facts(job_id)
        if facts is None or (facts["owner"] != key.name and not key.allows("admin")):
            raise ApiError(404, "job.unknown", "no such job for this key")
        return facts

    @app.get("/jobs/{job_id}", summary="Where a job (or batch) is")
    async def job_status(job_id: str, request: Request) -> Response:
        facts = owned(job_id, request)
        return JSONResponse(await run_in_threadpool(service.status, job_id, facts))

    @app.get("/jobs/{job_id}/result", summary="The result: the image, JSON, or a ZIP for a batch")
    async def job_result(job_id: str, request: Request) -> Response:
        facts = owned(job_id, request)
        if facts["kind"] == "batch":
            blob = await run_in_threadpool(service.batch_zip, facts)
            if blob is None:
                return problem(409, "job.not_done", "the batch is still running", **service.status(job_id, facts))
            return Response(blob, media_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="batch-{job_id}.zip"'})
        record = service.audit.find_job(job_id)
        if record is None:
            return problem(409, "job.not_done", "the job is still queued or running")
        if record.get("outcome") not in ("ok", "duplicate"):
            reason = record.get("reason") or {}
            return problem(422, reason.get("code", "input.rejected"), reason.get("message", ""),
                           audit={"seq": record["seq"], "hash": record["hash"]})
        outputs = await run_in_threadpool(service.result_of, job_id)
        assert outputs is not None
        _k, ctype, blob = outputs[0]
        return Response(blob, media_type=ctype, headers=_audit_headers(record))

    # -- subjects ------------------------------------------------------------------
    admin = Depends(scoped(keys, "admin"))

    @app.get("/subjects", summary="Enrolled subjects (no embeddings)")
    async def subjects(_key: ApiKey = Depends(scoped(keys, "enroll"))) -> Response:
        return JSONResponse(await run_in_threadpool(lambda: service.gallery().subjects()))

    @app.get("/subjects/{subject_id}", summary="One subject")
    async def subject(subject_id: str, _key: ApiKey = Depends(scoped(keys, "enroll"))) -> Response:
        rows = [s for s in await run_in_threadpool(lambda: service.gallery().subjects()) if s["id"] == subject_id]
        if not rows:
            return problem(404, "gallery.unknown_subject", f"no subject {subject_id!r} in the gallery")
        return JSONResponse(rows[0])

    @app.get("/subjects/{subject_id}/export", summary="Everything stored about a subject (access request)")
    async def export(subject_id: str, _key: ApiKey = admin) -> Response:
        return JSONResponse(await run_in_threadpool(lambda: service.gallery().export(subject_id)))

    @app.delete("/subjects/{subject_id}", summary="Erase a subject (audited tombstone)")
    async def erase(subject_id: str, request: Request, key: ApiKey = admin) -> Response:
        reason = request.query_params.get("reason", "erasure request")

        def run() -> dict[str, Any]:
            n = service.gallery().delete(subject_id)
            rec = service.audit.append({"kind": "subject.deleted", "subject": subject_id, "embeddings_removed": n,
                                        "by": f"api:{key.name}",
                                        "reason": {"code": "subject.erasure", "message": reason}})
            return {"subject": subject_id, "embeddings_removed": n, "audit": {"seq": rec["seq"], "hash": rec["hash"]}}

        return JSONResponse(await run_in_threadpool(run))

    # -- quarantine ----------------------------------------------------------------
    def entry_or_404(seq: int, *, open_only: bool = True) -> book.Entry:
        entry = book.find(service.audit, seq)
        if entry is None or (open_only and not book.is_open(service.audit, seq)):
            raise ApiError(404, "quarantine.unknown", f"no open quarantine entry {seq}")
        return entry

    @app.get("/quarantine", summary="Open quarantine entries")
    async def q_list(_key: ApiKey = admin) -> Response:
        def run() -> list[dict[str, Any]]:
            return [{**e.summary(), "present": book.has_bytes(e, service.stores)} for e in book.entries(service.audit)]
        return JSONResponse(await run_in_threadpool(run))

    @app.get("/quarantine/{seq}", summary="One entry with its audit record")
    async def q_show(seq: int, _key: ApiKey = admin) -> Response:
        entry = await run_in_threadpool(entry_or_404, seq, open_only=False)
        return JSONResponse({"entry": entry.summary(), "open": book.is_open(service.audit, seq),
                             "present": book.has_bytes(entry, service.stores), "record": entry.record})

    @app.get("/quarantine/{seq}/original", summary="The unprocessed original (admin only)")
    async def q_original(seq: int, _key: ApiKey = admin) -> Response:
        entry = await run_in_threadpool(entry_or_404, seq)
        store = service.stores.get(entry.quarantine["store"])
        if store is None or not book.has_bytes(entry, service.stores):
            return problem(410, "quarantine.missing", "its bytes are no longer in quarantine")
        return Response(store.get(entry.quarantine["key"]), media_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})

    @app.post("/quarantine/{seq}/retry", summary="Run it through the pipeline again")
    async def q_retry(seq: int, key: ApiKey = admin) -> Response:
        from facewarden.daemon.retry import retry_entry

        def run() -> dict[str, Any]:
            entry = entry_or_404(seq)
            if not book.has_bytes(entry, service.stores):
                raise ApiError(410, "quarantine.missing", "its bytes are no longer in quarantine")
            outcome = retry_entry(settings, service.audit, service.stores, entry,
                                  out=settings.state_dir / "api-results" / "retries"
                                  if entry.record.get("source") in ("api", None, "process") else None)
            return {"seq": seq, "outcome": outcome.outcome, "record": outcome.record.get("seq"),
                    "reason": outcome.record.get("reason"), "by": key.name}

        return JSONResponse(await run_in_threadpool(run))

    @app.post("/quarantine/{seq}/release", summary="Hand the original back (it is NOT anonymized)")
    async def q_release(seq: int, request: Request, key: ApiKey = admin) -> Response:
        why = request.query_params.get("reason")
        if not why:
            return problem(422, "quarantine.no_reason", "say why it is released: ?reason=...")

        def run() -> Response:
            entry = entry_or_404(seq)
            store = service.stores.get(entry.quarantine["store"])
            if store is None or not book.has_bytes(entry, service.stores):
                raise ApiError(410, "quarantine.missing", "its bytes are no longer in quarantine")
            data = store.get(entry.quarantine["key"])
            store.delete(entry.quarantine["key"])
            rec = book.record_action(service.audit, entry, "release", to="http response", why=why,
                                     by=f"api:{key.name}")
            name = safe_name(entry.input.get("key"), "original")
            return Response(data, media_type="application/octet-stream", headers={
                "Content-Disposition": f'attachment; filename="{name}"', **_audit_headers(rec)})

        return await run_in_threadpool(run)

    @app.delete("/quarantine/{seq}", summary="Purge the original; the record stays")
    async def q_purge(seq: int, key: ApiKey = admin) -> Response:
        def run() -> dict[str, Any]:
            entry = entry_or_404(seq)
            store = service.stores.get(entry.quarantine["store"])
            if store is not None and store.stat(entry.quarantine["key"]) is not None:
                store.delete(entry.quarantine["key"])
            rec = book.record_action(service.audit, entry, "purge", age_days=round(entry.age_days, 2),
                                     by=f"api:{key.name}")
            return {"seq": seq, "purged": True, "audit": {"seq": rec["seq"], "hash": rec["hash"]}}

        return JSONResponse(await run_in_threadpool(run))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        # Our own page reading openapi.json: Swagger UI would be ~1.5 MB of vendored JS
        # fetched from npm at build time, for a page that only lists operations.
        from facewarden.web import STATIC

        return Response((STATIC / "docs.html").read_bytes(), media_type="text/html")

    @app.get("/whoami", summary="The calling key's name and scopes")
    async def whoami(request: Request) -> Response:
        return JSONResponse(authenticate(keys, request).public())

    return app
