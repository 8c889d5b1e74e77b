"""Fine-tuning's budget, a hook of its training loop: the probe's timed steps, the plan made from
them, the pace that keeps the plan to the budget, and whether to adapt the encoder first (which
starts fine-tuning over). Without a budget, the plan is fixed at the start."""

import dataclasses
import time

from pipeline.adapt import Adapter, StartOver, adapt, new_adapter, unadaptable
from pipeline.loop import Action, Clock, Hook, Stepped, finished
from pipeline.plan import UNTIMED_STEPS, Pace, Probe, announce
from pipeline.trainer import Course, Examples, Run, Trainer
from shared.contracts.jobs import EventType
from shared.contracts.training import AdaptationPlan, TrainingPlan


class Budget(Hook):
    """Plans a trainer's run and keeps it to its budget. `kept`: the trainer resumed from a
    checkpoint, whose plan is kept; `probe`: the fine-tuning probe this process timed before
    fine-tuning started over, from whose rate the new plan's pace goes on."""

    def __init__(
        self,
        run: Run,
        trainer: Trainer,
        course: Course,
        clock: Clock,
        *,
        kept: bool,
        probe: Probe | None = None,
    ) -> None:
        self.run = run
        self.trainer = trainer
        self.course = course
        self.clock = clock
        self.kept = kept
        self.timed = probe
        self.probe: Probe | None = None
        self.plan: TrainingPlan | None = None
        self.pace: Pace | None = None

    def start(self) -> Action | None:
        trainer, planner = self.trainer, self.run.planner
        measures = planner.measures()
        asked = trainer.plan is None and self.run.config.adapt_epochs > 0 and not measures
        if asked and (action := self.adapt_as_asked()) is not None:
            return action
        plan = trainer.plan
        if plan is None and measures:
            self.probe = Probe(self.run.config.probe_steps)
            return None
        if plan is None:
            trainer.adopt(plan := planner.fixed())
        announce(self.run.reporter, plan, kept=self.kept)
        self.follow(plan, self.timed)
        return None

    def adapt_as_asked(self) -> Action | None:
        """Without a budget to weigh it against, adaptation runs as the config asks: fine-tuning
        starts over once it has; else the plan says why not."""
        run = self.run
        reason = unadaptable(run.model_type, run.splits.tokenizer)
        if reason is None:
            adapter = new_adapter(run)
            adapter.state.plan = run.planner.adaptation().model_dump(mode="json")
            return StartOver(adapter)
        not_adapted = run.planner.adaptation(chosen=False, reason=reason)
        self.trainer.adopt(run.planner.fixed().model_copy(update={"adaptation": not_adapted}))
        return None

    def after_step(self, stepped: Stepped) -> Action | None:
        if self.probe is not None:
            seconds = finished(self.run.device) - stepped.began
            self.probe.add(stepped.samples, stepped.tokens, seconds)
            return self.planned(self.probe) if self.probe.done else None
        if self.pace is not None and self.plan is not None:
            self.pace.add(stepped.tokens, time.monotonic() - stepped.began)
            self.keep_to_budget(self.plan, self.pace)
        return None

    def planned(self, probe: Probe) -> Action | None:
        """The plan from the probe's rate; where adaptation is chosen as well, fine-tuning starts
        over once it has adapted (the probe's steps trained the unadapted classifier)."""
        run, done = self.run, self.trainer.state.step
        plan = run.planner.plan(probe, spent_s=self.clock.spent(), done=done)
        if run.config.adapt_epochs > 0:
            adapted = adapter_if_it_fits(run, plan, probe, self.course.train, self.clock)
            if isinstance(adapted, Adapter):
                return StartOver(adapted, probe)
            # Timing adaptation took time of the budget too.
            plan = run.planner.plan(probe, spent_s=self.clock.spent(), done=done)
            plan = plan.model_copy(update={"adaptation": adapted})
        self.trainer.adopt(plan)
        self.probe = None
        announce(run.reporter, plan)
        self.follow(plan, probe)
        return None

    def follow(self, plan: TrainingPlan, probe: Probe | None) -> None:
        """Train as planned, a budgeted plan at a pace that goes on from the probe's rate."""
        self.plan = plan
        self.course.follow(plan)
        if plan.budget_s is not None and plan.predicted_s is not None:
            self.pace = self.run.planner.pace(plan, probe)

    def keep_to_budget(self, plan: TrainingPlan, pace: Pace) -> None:
        """Plan again where the pace so far would end the run out of the budget's band."""
        new = self.run.planner.kept_to_budget(
            plan, pace, spent_s=self.clock.spent(), done=self.trainer.state.step
        )
        if new is None:
            return
        self.trainer.adopt(new)
        pace.replanned()
        announce(self.run.reporter, new)
        self.plan = new
        self.course.follow(new)


def adapter_if_it_fits(
    run: Run, plan: TrainingPlan, probe: Probe, train: Examples, clock: Clock
) -> Adapter | AdaptationPlan:
    """With a budget, after fine-tuning's probe: time adaptation's first steps, and where it and
    the whole fine-tuning fit the budget, the adapter to go on with; else why not."""
    planner, config = run.planner, run.config
    reason = unadaptable(run.model_type, run.splits.tokenizer)
    if reason is None and not planner.adapts(plan):
        reason = f"the budget does not hold {config.max_epochs:g} epochs of fine-tuning alone"
    if reason is not None:
        return planner.adaptation(chosen=False, reason=reason)
    adapter = new_adapter(run)
    timing = Probe(config.probe_steps)
    until = min(adapter.state.total, UNTIMED_STEPS + timing.steps)
    adapt(run, adapter, train, clock, until=until, probe=timing)
    if timing.done:
        decision = planner.adapt_or_not(
            probe, timing, done=adapter.state.step, spent_s=clock.spent()
        )
    else:
        decision = planner.adaptation()
    if not decision.chosen:
        return decision
    if decision.predicted_s is not None and decision.fine_tuning_s is not None:
        run.reporter.event(
            EventType.log,
            {
                "message": f"adapting to the texts first: {decision.steps} steps of masked-LM "
                f"({decision.predicted_s / 60:.1f} minutes predicted), then fine-tuning afresh "
                f"({decision.fine_tuning_s / 60:.1f} minutes) within the budget",
                "adaptation": decision.model_dump(mode="json"),
            },
        )
    adapter.state.plan = decision.model_dump(mode="json")
    adapter.state.probe = dataclasses.asdict(probe)
    return adapter
