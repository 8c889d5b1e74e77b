// Everything tunable in the page, in one place.

export const LABELS = ["World", "Sports", "Business", "Sci/Tech"];

export const STAGES = {
  pipeline: ["ingest", "train", "evaluate", "promote"],
  train: ["ingest", "train", "evaluate"],
  evaluate: ["evaluate"],
  predict: [],
};

export const STAGE_NAMES = {
  ingest: "Ingest & validate",
  train: "Train",
  evaluate: "Evaluate",
  promote: "Promote",
};

// A stage's phases, where it has some: training adapts the encoder to the texts first.
export const PHASE_NAMES = {
  adapt: ": adapting to the texts (masked language model)",
};

export const CONFIG = {
  predictChunk: 64, // texts per POST /v1/predict
  maxTexts: 5000, // texts one classification may hold
  uploadMethod: "post", // "post" (a presigned POST policy, size-bounded) or "put"
  jobPollMs: 1000, // how often to look for the pipeline job an upload started
  jobWaitWarnMs: 30000, // then say that it is late
  jobsRefreshMs: 5000, // the jobs list, while a job on it is active
  healthPollMs: 5000, // while the server is unreachable
  reconnectBaseMs: 1000, // event stream reconnects back off from here...
  reconnectMaxMs: 15000, // ...to here
  chartMaxPoints: 2000,
};
