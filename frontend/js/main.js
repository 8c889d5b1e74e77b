// The page: routes between the screens, watches the server, exposes hooks for tests.

import { api } from "./api.js";
import { ClassifyScreen } from "./classify.js";
import { CONFIG } from "./config.js";
import { $, clear, h } from "./dom.js";
import { JobsScreen } from "./jobs.js";
import { ModelsScreen } from "./models.js";
import { MonitorScreen } from "./monitor.js";
import { RetrainScreen } from "./retrain.js";
import { ReviewScreen } from "./review.js";
import { signOut, whoAmI } from "./session.js";

class App {
  constructor() {
    this.banner = $("#offline");
    this.serving = $("#serving");
    this.healthTimer = null;
    this.session = null; // who is signed in and with which scopes (GET /v1/session)
    this.screens = {
      classify: new ClassifyScreen(this),
      retrain: new RetrainScreen(this),
      jobs: new JobsScreen(this),
      models: new ModelsScreen(this),
      monitor: new MonitorScreen(this),
      review: new ReviewScreen(this),
    };
    this.current = null;
    window.addEventListener("hashchange", () => this.route(true));
    window.addEventListener("agnews:network", (event) => this.network(event.detail));
    window.addEventListener("agnews:production", () => this.refreshServing());
    window.addEventListener("agnews:session", (event) => this.showAccount(event.detail));
    $("#signout").addEventListener("click", () => this.signOut());
    this.route(false);
    this.refreshServing();
    whoAmI().then((session) => this.showAccount(session), () => {});
  }

  // Whether the session may promote, roll back and name or dismiss a challenger: an admin key,
  // or a server with no keys. The server decides; this only spares a button that would fail.
  canAdmin() {
    return Boolean(this.session?.scopes?.includes("admin"));
  }

  // The signed-in key and a sign-out button; nothing when the server is open (no keys).
  showAccount(session) {
    this.session = session ?? null;
    if (this.current) this.screens[this.current].sessionChanged?.();
    const account = $("#account");
    account.hidden = !session?.signed_in;
    $("#account-name").textContent = session?.signed_in ? `Signed in as ${session.name}` : "";
  }

  // Signed out, the page starts afresh: its next request asks for a key again.
  async signOut() {
    await signOut();
    location.reload();
  }

  route(moveFocus) {
    const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
    const screen = this.screens[name] ? name : "classify";
    const argument = rest.length ? decodeURIComponent(rest.join("/")) : null;
    if (this.current && this.current !== screen) this.screens[this.current].leave?.();
    this.current = screen;
    for (const section of document.querySelectorAll("[data-screen]")) section.hidden = section.dataset.screen !== screen;
    for (const link of document.querySelectorAll("[data-tab]")) {
      if (link.dataset.tab === screen) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    this.screens[screen].enter(argument);
    document.title = `${$(`#h-${screen}`).textContent} · AG News classifier`;
    if (moveFocus) {
      const heading = $(`#h-${screen}`);
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
      window.scrollTo({ top: 0 });
    }
  }

  async refreshServing() {
    try {
      this.setServing(await api.production());
    } catch {
      // The banner tells.
    }
  }

  setServing(production) {
    clear(this.serving, production
      ? [h("span", { class: "live-dot", "aria-hidden": "true" }), "Serving ", h("code", { title: production.reason }, production.version)]
      : h("span", { class: "muted" }, "No model in production"));
  }

  network({ online, message }) {
    if (online) {
      if (!this.banner.hidden) {
        this.banner.hidden = true;
        this.refreshServing();
      }
      clearTimeout(this.healthTimer);
      this.healthTimer = null;
      return;
    }
    clear(this.banner, h("div", { class: "banner-inner" },
      h("strong", {}, "The server is unreachable. "), message || "", " Retrying every few seconds…",
      h("button", { type: "button", class: "btn small", onclick: () => this.checkHealth() }, "Retry now")));
    this.banner.hidden = false;
    if (!this.healthTimer) this.healthTimer = setTimeout(() => this.checkHealth(), CONFIG.healthPollMs);
  }

  async checkHealth() {
    clearTimeout(this.healthTimer);
    this.healthTimer = null;
    try {
      await api.health();
    } catch {
      // `network` has scheduled the next try.
    }
  }

  visibleJobView() {
    if (this.current === "retrain") return this.screens.retrain.view;
    if (this.current === "jobs") return this.screens.jobs.view;
    if (this.current === "classify") return this.screens.classify.view;
    return null;
  }
}

const app = new App();

// Hooks for the browser tests.
window.__agnews = {
  app,
  dropStream: () => app.visibleJobView()?.drop() ?? false,
  job: () => app.visibleJobView()?.snapshot() ?? null,
  monitor: () => app.screens.monitor.snapshot(),
  review: () => app.screens.review.snapshot(),
};
