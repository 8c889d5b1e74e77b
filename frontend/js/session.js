// Sign-in: when the API answers 401, ask for a key once, exchange it for the session cookie
// (HttpOnly: the page never holds it), then go on. Sign-out clears the cookie.

import { $ } from "./dom.js";

let pending = null; // one dialog at a time, however many requests met a 401

function announce(session) {
  window.dispatchEvent(new CustomEvent("agnews:session", { detail: session }));
}

async function post(method, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/v1/session", options);
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  return { ok: response.ok, status: response.status, body: parsed };
}

// Resolves once signed in; rejects if the user cancels.
export function signIn() {
  if (pending) return pending;
  const dialog = $("#signin-dialog");
  const form = $("#signin-form");
  const input = $("#signin-key");
  const error = $("#signin-error");
  pending = new Promise((resolve, reject) => {
    const finish = (outcome) => {
      form.removeEventListener("submit", submit);
      $("#signin-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      input.value = "";
      if (dialog.open) dialog.close();
      pending = null;
      outcome();
    };
    const submit = async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        error.textContent = "Enter your API key.";
        return;
      }
      error.textContent = "";
      let answer;
      try {
        answer = await post("POST", { key });
      } catch {
        error.textContent = "Cannot reach the server.";
        return;
      }
      if (!answer.ok) {
        error.textContent = answer.body?.error?.message ?? `Sign-in failed (${answer.status}).`;
        input.select();
        return;
      }
      announce(answer.body);
      finish(resolve);
    };
    const cancel = (event) => {
      event?.preventDefault();
      finish(() => reject(new Error("sign-in cancelled")));
    };
    form.addEventListener("submit", submit);
    $("#signin-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    error.textContent = "";
    dialog.showModal();
    input.focus();
  });
  return pending;
}

export async function signOut() {
  const answer = await post("DELETE");
  announce(answer.body ?? { signed_in: false, open: false });
}

// Who is signed in; null when keys are on and nobody is.
export async function whoAmI() {
  const answer = await post("GET");
  return answer.ok ? answer.body : null;
}
