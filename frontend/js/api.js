// The gateway's HTTP API. Every failure becomes an ApiError with a message fit to show.

import { CONFIG } from "./config.js";
import { signIn } from "./session.js";

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message || `request failed (${code || status})`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details ?? {};
    this.retryAfter = null; // seconds, from a Retry-After header (503 overloaded, 429)
  }

  get network() {
    return this.status === 0;
  }
}

// Tells the page whether the server answered; main.js shows or hides the banner.
function announce(online, message = "") {
  window.dispatchEvent(new CustomEvent("agnews:network", { detail: { online, message } }));
}

export function errorFromBody(status, body, fallback) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(status, error.code ?? "error", error.message ?? fallback, error.details);
  }
  return new ApiError(status, "http_error", fallback);
}

async function call(method, path, body, retried = false) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (cause) {
    const error = new ApiError(0, "network", `Cannot reach the server (${cause.message || "network error"}). Is it running?`);
    announce(false, error.message);
    throw error;
  }
  announce(true);
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (response.status === 401 && !retried) {
    // Keys are on and this browser has no session: ask for a key once, then try again.
    try {
      await signIn();
    } catch {
      throw errorFromBody(401, parsed, "Sign in to use the API.");
    }
    return call(method, path, body, true);
  }
  if (!response.ok) {
    const fallback = `${method} ${path} answered ${response.status} ${response.statusText}`.trim();
    if (response.status >= 502 && response.status <= 504 && !parsed) announce(false, `${fallback}: the server behind it is down.`);
    const error = errorFromBody(response.status, parsed, fallback);
    const after = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    if (Number.isFinite(after)) error.retryAfter = after;
    throw error;
  }
  if (text && parsed === null) {
    throw new ApiError(response.status, "bad_response", `${method} ${path} did not answer with JSON`);
  }
  return { status: response.status, body: parsed };
}

const get = async (path) => (await call("GET", path)).body;
const query = (params) => {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== undefined && value !== null && value !== "") search.set(name, value);
  const text = search.toString();
  return text ? `?${text}` : "";
};
const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

export const api = {
  // {status: 200, body: predictions} or {status: 202, body: job}
  predict: (texts) => call("POST", "/v1/predict", { texts }),
  createUpload: (file) => call("POST", "/v1/uploads", { filename: file.name, size: file.size }).then((r) => r.body),
  jobs: (params = {}) => get(`/v1/jobs${query(params)}`).then((body) => body?.jobs ?? []),
  job: (id) => get(jobPath(id)),
  // {type: "batch_predict", dataset: KEY} and the like: the job as created (202)
  createJob: (params) => call("POST", "/v1/jobs", params).then((r) => r.body),
  // {key, url, expires_in}: a presigned GET of a succeeded batch_predict job's predictions.csv
  jobOutput: (id) => get(`${jobPath(id)}/output`),
  cancel: (id) => call("DELETE", jobPath(id)).then((r) => r.body),
  eventsUrl: (id, after) => `${jobPath(id)}/events${query({ last_event_id: after })}`,
  models: (params = {}) => get(`/v1/models${query(params)}`),
  model: (version) => get(`/v1/models/${encodeURIComponent(version)}`),
  production: async () => {
    try {
      return await get("/v1/models/production");
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  },
  promote: (version, reason) =>
    call("POST", `/v1/models/${encodeURIComponent(version)}/promote`, { reason }).then((r) => r.body),
  monitor: (version) => get(`/v1/models/${encodeURIComponent(version)}/monitor`),
  challenger: async () => {
    try {
      return await get("/v1/models/challenger");
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  },
  challenge: (version, share, reason) =>
    call("POST", `/v1/models/${encodeURIComponent(version)}/challenge`, { share, reason }).then((r) => r.body),
  dismissChallenger: () => call("DELETE", "/v1/models/challenger").then((r) => r.body),
  giveFeedback: (body) => call("POST", "/v1/feedback", body).then((r) => r.body),
  feedback: (params = {}) => get(`/v1/feedback${query(params)}`).then((body) => body?.feedback ?? []),
  review: (params = {}) => get(`/v1/feedback/review${query(params)}`),
  health: () => get("/healthz"),
};

// Sends the file straight to the object store, reporting progress: a presigned POST policy (it
// bounds the size), else a presigned PUT where the store does not take POST policies.
// Returns {promise, abort}. `contentType` is what a presigned PUT says it sends.
export function uploadToStore(ticket, file, onProgress, contentType = "application/zip") {
  let xhr = null;
  let aborted = false;
  const send = (method) => new Promise((resolve, reject) => {
    xhr = new XMLHttpRequest();
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(Math.min(event.loaded, file.size), file.size);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else reject(new ApiError(xhr.status, storeErrorCode(xhr.responseText), storeMessage(xhr)));
    };
    xhr.onerror = () =>
      reject(new ApiError(0, "network", `The upload to the object store at ${new URL(ticket.url).origin} failed: the store is unreachable or refused this page (CORS).`));
    xhr.onabort = () => reject(new ApiError(0, "aborted", "The upload was cancelled."));
    if (method === "post") {
      const form = new FormData();
      for (const [name, value] of Object.entries(ticket.fields)) form.append(name, value);
      form.append("file", file);
      xhr.open("POST", ticket.url);
      xhr.send(form);
    } else {
      xhr.open("PUT", ticket.put_url);
      xhr.setRequestHeader("Content-Type", contentType);
      xhr.send(file);
    }
  });
  const promise = (async () => {
    const first = CONFIG.uploadMethod;
    try {
      await send(first);
    } catch (error) {
      const unsupported = error.status === 405 || error.status === 501 || error.code === "NotImplemented";
      if (aborted || first !== "post" || !unsupported) throw error;
      onProgress(0, file.size);
      await send("put");
    }
    onProgress(file.size, file.size);
  })();
  return {
    promise,
    abort: () => {
      aborted = true;
      xhr?.abort();
    },
  };
}

function storeErrorCode(text) {
  return /<Code>([^<]+)<\/Code>/.exec(text ?? "")?.[1] ?? "store_error";
}

function storeMessage(xhr) {
  const message = /<Message>([^<]+)<\/Message>/.exec(xhr.responseText ?? "")?.[1];
  return `The object store refused the upload (${xhr.status}${message ? `: ${message}` : ""}).`;
}
