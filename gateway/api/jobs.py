"""The routes of video jobs (gateway/jobs/service.py): a video analysed with no connection held open.

    POST   /v1/jobs               multipart: `file` (the video) or `url` (its http(s) address, downloaded by the job:
                                  gateway/jobs/download.py), `model`, the v1 video route's arguments
                                  (size, confidence, iou, classes, vid_stride, track, tracker, ...), optional `webhook`
                                  -> 202 {id, state: "queued", status_url, ...} and a Location header
    GET    /v1/jobs               the key's jobs (unfinished and kept finished ones)
    GET    /v1/jobs/{id}          state (queued|running|done|failed|cancelled), stage (downloading|analysing while
                                  running), progress, error, result URL
    GET    /v1/jobs/{id}/result   the result: the v1 video route's NDJSON answer (stream=true), one line per frame
    DELETE /v1/jobs/{id}          cancel a queued or running job; delete a finished one

The POST is admitted like a prediction (the key and its model scope checked before the body is read, its slots,
one token, the body read under the same pace and limits, spooled, never whole in memory); a key sees only its own
jobs (404 for any other).
"""

from __future__ import annotations

import contextlib
import time

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.failures import set_dialect
from gateway.api.forms import api_key, collect, key_entry
from gateway.api.routes import read_form  # the body read as a prediction's: pace, limits, spooled
from gateway.budget import Hold
from gateway.dialects import DIALECTS
from gateway.errors import BadRequest, envelope, json_response, ok_response
from gateway.jobs.service import Jobs
from gateway.observability import record_of
from gateway.predict.video import NDJSON
from gateway.services import Prediction, services_of

HUB = DIALECTS["hub"]


def _jobs(request: Request) -> Jobs:
    jobs = request.app.state.jobs
    assert isinstance(jobs, Jobs)
    return jobs


async def submit_job(request: Request) -> Response:
    services = services_of(request)
    set_dialect(request, HUB)
    record = record_of(request)
    model = request.query_params.get("model")
    key, header = api_key(request)
    entry = await services.store.authenticate(key, model, header)
    record.key_id = entry.id
    async with contextlib.AsyncExitStack() as held:
        services.key_slots.claim(entry.id)
        held.callback(services.key_slots.release, entry.id)
        await services.store.spend(entry)  # the job's first frame, as a video request's own token
        services.check_room()
        hold = Hold(services.budget, entry.id)
        held.callback(hold.release)
        prediction = Prediction(services, entry, record, hold, held, HUB, time.perf_counter())
        form, _ = await read_form(request, prediction)
        held.push_async_callback(form.close)
        services.enter()
        held.callback(services.leave)
        uploads, fields = collect(request, form, "file")
        model = fields.get("model", "").strip()
        if not model:
            raise BadRequest("Missing 'model': the model id to run on each frame (GET /v1/models lists them).")
        record.model = model[:64]
        await services.store.authenticate(key, model, header)  # the key's model scope (403)
        resource, secret = await _jobs(request).create(entry, uploads, {**fields, "model": model})
    message = f"Job queued; poll {resource['status_url']} for its progress and result."
    if secret is not None:
        resource["webhook_secret"] = secret
        message += " Keep the webhook secret: it is shown only this once (POST /v1/webhooks/secret makes a new one)."
    return json_response(envelope(message, resource), 202, {"Location": resource["status_url"]})


async def list_jobs(request: Request) -> Response:
    found = await _jobs(request).list(await key_entry(request))
    return ok_response(found, f"{len(found)} job(s).")


async def get_job(request: Request) -> Response:
    found = await _jobs(request).get(await key_entry(request), request.path_params["job_id"])
    return ok_response(found, f"Job {found['state']}.")


async def job_result(request: Request) -> Response:
    path = await _jobs(request).result(await key_entry(request), request.path_params["job_id"])
    return FileResponse(path, media_type=NDJSON, headers={"Cache-Control": "no-store"})


async def delete_job(request: Request) -> Response:
    found = await _jobs(request).delete(await key_entry(request), request.path_params["job_id"])
    said = "Job cancelled; its owner stops within a second." if found["state"] == "cancelled" else "Job deleted."
    return ok_response(found, said)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/jobs", submit_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/result", job_result, methods=["GET"]),
    ]
