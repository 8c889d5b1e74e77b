"""Predict jobs served in batches: many jobs' texts through one forward pass of one model."""

import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from pipeline.predictor import answers
from shared.contracts.errors import ErrorInfo, InvalidRequest, NotFound, error_info
from shared.contracts.jobs import PredictParams
from shared.contracts.results import Prediction, PredictResult
from shared.contracts.stages import PREDICT
from shared.jobstore import JobStore
from shared.logs import bound
from shared.reaper import worker_lost
from workers.models import ServingModel

log = logging.getLogger(__name__)

End = tuple[str, PredictResult | ErrorInfo]
Served = tuple[str, list[str], list[Prediction]]


def serve_batch(
    store: JobStore,
    model: ServingModel,
    job_ids: Sequence[str],
    on_forward_done: Callable[[], None] = lambda: None,
    max_deliveries: int | None = None,
) -> None:
    """Answer every predict job of a batch: each gets its own texts' predictions, or its error.

    Redis is read and written once per batch, not per job; tokenizing happens outside the
    model's lock, and `on_forward_done` lets the next batch into the model while this one's
    answers are written. Messages are acknowledged after this returns, so a worker that dies
    mid-batch has its jobs served by another; with `max_deliveries`, a job delivered more often
    than that (its texts keep killing workers) fails with "worker lost N times" instead.
    """
    with bound(task=PREDICT):
        _serve(store, model, job_ids, on_forward_done, max_deliveries)


def _serve(
    store: JobStore,
    model: ServingModel,
    job_ids: Sequence[str],
    on_forward_done: Callable[[], None],
    max_deliveries: int | None,
) -> None:
    ends: list[End] = []
    work: list[tuple[str, list[str]]] = []
    began = time.perf_counter()
    for claim in store.claim_many(job_ids, PREDICT):
        if isinstance(claim.refused, NotFound):
            log.warning(
                "predict job %s expired before it was served",
                claim.job_id,
                extra={"job_id": claim.job_id},
            )
        elif claim.refused is not None:
            continue
        elif max_deliveries is not None and claim.deliveries > max_deliveries:
            ends.append((claim.job_id, worker_lost(PREDICT, max_deliveries)))
        else:
            try:
                work.append((claim.job_id, _texts(claim.params)))
            except InvalidRequest as exc:
                ends.append((claim.job_id, exc.info()))
    began_forward = time.perf_counter()
    try:
        answered, served = _predict(model, work)
        ends += answered
    finally:
        on_forward_done()
    if work:
        texts = sum(len(texts) for _, texts in work)
        model.pace.add(texts, time.perf_counter() - began_forward)
    store.finish_many(ends)
    if served is not None:
        model.challenger.offer(*served)
    log.debug(
        "served %d predict jobs in %.1f ms", len(job_ids), (time.perf_counter() - began) * 1000
    )


def _texts(params: str) -> list[str]:
    try:
        return PredictParams.model_validate_json(params).texts
    except ValidationError as exc:
        raise InvalidRequest(f"not the parameters of a predict job: {exc}") from None


def _predict(
    model: ServingModel, work: list[tuple[str, list[str]]]
) -> tuple[list[End], Served | None]:
    """Each job's answer, and what was answered (for the challenger) when the pass succeeded."""
    if not work:
        return [], None
    try:
        predictor = model.current()
        every_text = [text for _, texts in work for text in texts]
        encoded = predictor.encode(every_text)
        with model.forward_lock:
            began = time.perf_counter()
            transformer = predictor.forward(encoded.ids)
            seconds = time.perf_counter() - began
        rows = answers(predictor.blend(transformer, every_text), encoded.truncated)
    except Exception as exc:
        log.exception("a batch of %d predict jobs failed", len(work))
        return [(job_id, error_info(exc)) for job_id, _ in work], None
    ends: list[End] = []
    start = 0
    for job_id, texts in work:
        ends.append(
            (
                job_id,
                PredictResult(
                    model_version=predictor.version,
                    form=predictor.form,
                    predictions=rows[start : start + len(texts)],
                ),
            )
        )
        start += len(texts)
    lengths = [len(ids) for ids in encoded.ids]
    model.tally.add(predictor.version, predictor.form, rows, lengths, seconds, every_text)
    return ends, (predictor.version, every_text, rows)
