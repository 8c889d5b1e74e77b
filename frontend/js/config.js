// Everything tunable in the page, in one place.

export const LABELS = ["World", "Sports", "Business", "Sci/Tech"];

export const STAGES = {
  pipeline: ["ingest", "train", "evaluate", "promote"],
  train: ["ingest", "train", "evaluate"],
  evaluate: ["evaluate"],
  predict: [],
  batch_predict: ["batch_predict"],
};

export const STAGE_NAMES = {
  ingest: "Ingest & validate",
  train: "Train",
  evaluate: "Evaluate",
  promote: "Promote",
  batch_predict: "Classify the file",
};

// A stage's phases, where it has some: training adapts the encoder to the texts first; a distil
// run fine-tunes its teacher (which may adapt too) and has it label the texts before the student.
export const PHASE_NAMES = {
  adapt: ": adapting to the texts (masked language model)",
  teacher: ": the teacher",
  "teacher adapt": ": the teacher, adapting to the texts",
  label: ": the teacher labels the texts",
};

// Upper bounds of the monitor's histogram buckets, as shared/contracts/monitor.py has them
// (CONFIDENCE_EDGES, MARGIN_EDGES, TOKEN_EDGES); the last bucket takes everything above.
export const MONITOR_EDGES = {
  confidence: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0],
  margin: [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
  tokens: [16, 24, 32, 40, 48, 64, 96, 128, Infinity],
};

export const CONFIG = {
  predictChunk: 64, // texts per POST /v1/predict
  maxTexts: 5000, // texts one classification may hold
  batchAboveRows: 500, // a file holding more texts goes to a batch_predict job, not /v1/predict
  uploadMethod: "post", // "post" (a presigned POST policy, size-bounded) or "put"
  jobPollMs: 1000, // how often to look for the pipeline job an upload started
  jobWaitWarnMs: 30000, // then say that it is late
  jobsRefreshMs: 5000, // the jobs list, while a job on it is active
  healthPollMs: 5000, // while the server is unreachable
  reconnectBaseMs: 1000, // event stream reconnects back off from here...
  reconnectMaxMs: 15000, // ...to here
  chartMaxPoints: 2000,
  monitorRefreshMs: 10000, // the monitor, while it is shown
  reviewLimit: 50, // uncertain answers the Review view lists
};
