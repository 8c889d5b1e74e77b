// Feedback: a person's label for an answered text, one click away (POST /v1/feedback).
// The Classify view puts the control under every answer, the Review view beside every uncertain
// answer; the server stores each click in S3 before it answers.

import { api } from "./api.js";
import { LABELS } from "./config.js";
import { h, messageOf } from "./dom.js";

// Whether the session may give feedback (the predict scope, or admin, or an open server). The
// server decides; this only spares buttons that would fail.
export function canGiveFeedback(session) {
  if (!session || session.open) return true;
  return Boolean(session.scopes?.some((scope) => scope === "predict" || scope === "admin"));
}

// What the server is told about the answer being judged: with the predict job and the text's
// index it reads the version and the label from the job; otherwise it keeps what the page saw.
function requestBody(source, label) {
  const body = { text: source.text, label };
  if (source.job_id) {
    body.job_id = source.job_id;
    body.index = source.index ?? 0;
  }
  if (source.model_version) body.model_version = source.model_version;
  if (source.predicted) body.predicted = source.predicted;
  return body;
}

// A "Right topic?" row: the answered label to confirm, then the three others to correct to.
// source: {text, predicted, job_id?, index?, model_version?}. `onSaved(record)` follows a save.
export function feedbackControl(source, { onSaved = () => {} } = {}) {
  const status = h("span", { class: "feedback-status", role: "status", "aria-live": "polite" });
  const others = LABELS.filter((label) => label !== source.predicted);
  const ordered = source.predicted ? [source.predicted, ...others] : others;
  const buttons = ordered.map((label) => {
    const confirms = label === source.predicted;
    return h("button", {
      type: "button",
      class: `btn small feedback-choice${confirms ? " confirm" : ""}`,
      "data-label": label,
      "aria-pressed": "false",
      title: confirms ? `Confirm: the topic is ${label}` : `Correct: the topic is ${label}`,
      onclick: () => save(label),
    }, confirms ? `✓ ${label}` : label);
  });
  const box = h("div", { class: "feedback", "data-state": "open", role: "group", "aria-label": "Is the topic right?" },
    h("span", { class: "feedback-ask" }, source.predicted ? "Right topic?" : "Topic:"),
    buttons.slice(0, source.predicted ? 1 : 0),
    source.predicted ? h("span", { class: "feedback-or" }, "or") : "",
    buttons.slice(source.predicted ? 1 : 0),
    status);

  async function save(label) {
    for (const button of buttons) button.disabled = true;
    box.dataset.state = "saving";
    status.className = "feedback-status";
    status.textContent = "Saving…";
    try {
      const record = await api.giveFeedback(requestBody(source, label));
      box.dataset.state = "saved";
      box.dataset.saved = record.label;
      for (const button of buttons) {
        const chosen = button.dataset.label === record.label;
        button.setAttribute("aria-pressed", String(chosen));
        button.classList.toggle("chosen", chosen);
        button.disabled = false;
      }
      status.textContent = record.agreed ? "Thanks, confirmed." : `Thanks, saved as ${record.label}.`;
      onSaved(record);
    } catch (error) {
      box.dataset.state = "error";
      status.className = "feedback-status error";
      status.textContent = `Not saved: ${messageOf(error)}`;
      for (const button of buttons) button.disabled = false;
    }
  }

  return box;
}
