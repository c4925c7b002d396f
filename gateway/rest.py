"""The REST face: the upstream's own access-code PUT, served from whichever backend runs.

It answers as the Clinical One reference describes: the bare `BootStrapCredResponseDto` on 200;
an `ORSResponse` whose `errorData` carries the cause's REST errorCode and documented prose
otherwise. The path and both bodies are `gateway.contract`'s; codes, statuses and prose come
from `gateway.domain.CAUSES`.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.callers import caller_of
from gateway.contract import ACCESS_CODE_PATH, credentials_body, refusal_body
from gateway.domain import RateLimited, Refusal
from gateway.metrics import observe_request
from gateway.regeneration import DeviceRequest
from gateway.state import state_of

NO_STORE = {"Cache-Control": "no-store"}


def error_response(refusal: Refusal) -> JSONResponse:
    headers = dict(NO_STORE)
    if isinstance(refusal, RateLimited):
        headers["Retry-After"] = str(refusal.retry_after_seconds)
    return JSONResponse(refusal_body(refusal), status_code=refusal.cause.http_status, headers=headers)


def _request(request: Request) -> DeviceRequest:
    params = request.path_params
    m_subject_ids = request.query_params.getlist("mSubjectId")
    return DeviceRequest(
        study_id=params["studyId"],
        mode=params["mode"],
        subject_id=params["subjectId"],
        inventory_id=params["inventoryId"],
        # Absent or repeated: refused as an empty value, naming the field.
        m_subject_id=m_subject_ids[0] if len(m_subject_ids) == 1 else "",
    )


async def regenerate_access_code(request: Request) -> JSONResponse:
    started = time.perf_counter()
    service = state_of(request)["service"]
    try:
        credentials = await service.regenerate(_request(request), caller_of(request))
    except Refusal as refusal:
        response = error_response(refusal)
    else:
        response = JSONResponse(credentials_body(credentials), headers=NO_STORE)
    observe_request("rest", str(response.status_code), time.perf_counter() - started)
    return response


routes = [Route(ACCESS_CODE_PATH, regenerate_access_code, methods=["PUT"])]
