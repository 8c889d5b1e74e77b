// A job's server-sent events: resumes where it left off, never delivers an event twice, and
// closes after the terminal event (else the browser would reconnect forever).

import { api, ApiError, errorFromBody } from "./api.js";
import { CONFIG } from "./config.js";

const TYPES = ["status", "progress", "metric", "log", "result", "error"];

// Stream entry ids are `milliseconds-sequence`; compares them as numbers.
export function compareIds(a, b) {
  const [am, as = "0"] = String(a).split("-");
  const [bm, bs = "0"] = String(b).split("-");
  const major = BigInt(am) - BigInt(bm);
  if (major !== 0n) return major < 0n ? -1 : 1;
  const minor = BigInt(as) - BigInt(bs);
  return minor === 0n ? 0 : minor < 0n ? -1 : 1;
}

export class JobStream {
  // onEvent({id, type, data}) once per event in order; onState("connecting" | "live" |
  // "reconnecting" | "ended" | "failed", detail)
  constructor(jobId, { onEvent, onState = () => {} }) {
    this.jobId = jobId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.seen = new Set();
    this.source = null;
    this.closed = false;
    this.attempt = 0;
    this.timer = null;
    this.connections = 0;
    this.duplicates = 0;
  }

  open() {
    if (this.closed) return this;
    const source = new EventSource(api.eventsUrl(this.jobId, this.lastId));
    this.source = source;
    this.connections += 1;
    this.onState(this.connections === 1 ? "connecting" : "reconnecting");
    source.onopen = () => {
      if (source !== this.source) return;
      this.attempt = 0;
      this.onState("live");
    };
    for (const type of TYPES) source.addEventListener(type, (event) => this.receive(source, type, event));
    return this;
  }

  receive(source, type, event) {
    if (source !== this.source || this.closed) return;
    // A connection failure is an `error` event too, but not a message from the server.
    if (type === "error" && !(event instanceof MessageEvent)) {
      this.lost(source);
      return;
    }
    const id = event.lastEventId;
    if (id) {
      if (this.seen.has(id) || (this.lastId && compareIds(id, this.lastId) <= 0)) {
        this.duplicates += 1;
        return;
      }
      this.seen.add(id);
      this.lastId = id;
    }
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      data = { message: String(event.data) };
    }
    this.onEvent({ id, type, data });
    if (type === "result" || type === "error") {
      this.close();
      this.onState("ended");
    }
  }

  lost(source) {
    // While CONNECTING the browser retries by itself, sending Last-Event-ID.
    if (source.readyState === EventSource.CONNECTING) {
      this.onState("reconnecting");
      return;
    }
    source.close();
    this.source = null;
    this.retry();
  }

  retry() {
    if (this.closed) return;
    clearTimeout(this.timer);
    const delay = Math.min(CONFIG.reconnectMaxMs, CONFIG.reconnectBaseMs * 2 ** this.attempt);
    this.attempt += 1;
    this.onState("reconnecting", { delay });
    this.timer = setTimeout(() => this.recheck(), delay);
  }

  // The browser gave up (an HTTP error, say): ask why before opening the stream again.
  async recheck() {
    if (this.closed) return;
    try {
      await api.job(this.jobId);
    } catch (error) {
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        this.close();
        this.onState("failed", error);
        return;
      }
      this.retry();
      return;
    }
    this.open();
  }

  // For tests and the "reconnect" button: cut the connection as a network failure would.
  drop() {
    if (this.closed || !this.source) return false;
    this.source.close();
    this.source = null;
    this.retry();
    return true;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}

// Follows a job until it ends: resolves with its result, rejects with its error.
export function jobOutcome(jobId) {
  return new Promise((resolve, reject) => {
    const stream = new JobStream(jobId, {
      onEvent: ({ type, data }) => {
        if (type === "result") resolve(data);
        else if (type === "error") reject(errorFromBody(0, { error: data }, "the job failed"));
      },
      onState: (state, detail) => {
        if (state === "failed") reject(detail);
      },
    });
    stream.open();
  });
}
