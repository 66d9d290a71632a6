// The live connection: one EventSource on the per-user stream carries every chat (messages,
// new DMs, presence, read markers). When EventSource is missing or keeps failing, the page
// polls every 3 seconds instead and says so.
//
// State: the EventSource, the newest message id it carried (where a new one resumes), the
// failures in a row and the backoff before making a new one, and polling. The mode it is in
// is shown by connection.js.

import { parse } from "./dom.js";
import { api, getToken } from "./api.js";
import { on } from "./events.js";
import { currentGeneration, handleAuth, isCurrent } from "./session.js";
import * as chats from "./chats.js";
import * as conversation from "./conversation.js";
import { setMode } from "./connection.js";
import * as typing from "./typing.js";

const POLL_MS = 3000; // the seed's polling period
const FAILURES_BEFORE_POLLING = 3; // stream errors in a row before polling takes over
const FIRST_RECREATE_MS = 1000; // a closed EventSource is made again after this, doubling...
const MAX_RECREATE_MS = 30000; // ...up to this

let lastEventId = 0; // the newest message id heard on the stream: where a new stream resumes
let source = null;
let failures = 0;
let recreateTimer = null;
let recreateDelay = FIRST_RECREATE_MS;
let polling = false;
let pollReason = "";
let pollTimer = null;

on("logout", () => {
  closeSource();
  stopPolling();
  clearTimeout(recreateTimer);
  recreateTimer = null;
  lastEventId = 0;
  failures = 0;
  recreateDelay = FIRST_RECREATE_MS;
  setMode("connecting");
});
on("relogin", () => openSource());

/** Start receiving, from the newest message id the chat list had. */
export function connect(fromId) {
  lastEventId = Math.max(lastEventId, fromId);
  if (typeof window.EventSource !== "function") {
    startPolling("sin-eventsource");
    return;
  }
  openSource();
}

function resumeFrom(event) {
  const id = Number(event.lastEventId);
  if (Number.isInteger(id) && id > lastEventId) lastEventId = id;
}

function openSource() {
  closeSource();
  clearTimeout(recreateTimer);
  recreateTimer = null;
  if (typeof window.EventSource !== "function") return;
  const params = new URLSearchParams();
  if (getToken()) params.set("token", getToken());
  // The browser sends Last-Event-ID on its own reconnects; a new EventSource needs this.
  // Even 0: then whatever was posted to our (empty) chats since the list was read comes too.
  params.set("last_event_id", String(lastEventId));
  const opened = new EventSource("/api/stream?" + params.toString());
  source = opened;
  opened.onopen = () => {
    if (source !== opened) return;
    const recovering = failures > 0 || polling || !chats.isLoaded();
    failures = 0;
    recreateDelay = FIRST_RECREATE_MS;
    stopPolling();
    setMode("connected");
    // Messages come back by replay; new chats, presence and markers are re-read.
    if (recovering) chats.load().catch(handleAuth);
  };
  opened.onerror = () => {
    if (source !== opened) return;
    failures += 1;
    // CLOSED: the server answered with an error (or not a stream); the browser gave up.
    if (opened.readyState === EventSource.CLOSED) scheduleRecreate();
    if (failures >= FAILURES_BEFORE_POLLING) startPolling("falla");
    else if (!polling) setMode("reconnecting");
  };
  opened.addEventListener("message", (e) => {
    const message = parse(e.data);
    if (!message) return;
    resumeFrom(e);
    chats.receive(message);
  });
  opened.addEventListener("chat", (e) => chats.add(parse(e.data)));
  opened.addEventListener("presence", (e) => chats.presence(parse(e.data)));
  opened.addEventListener("read", (e) => chats.applyRead(parse(e.data)));
  opened.addEventListener("typing", (e) => typing.heard(parse(e.data)));
  opened.addEventListener("reset", (e) => {
    // Too far behind to replay: reload what is on screen.
    resumeFrom(e);
    chats.load().catch(handleAuth);
    conversation.reload();
  });
}

function closeSource() {
  if (source) source.close();
  source = null;
}

function scheduleRecreate() {
  closeSource();
  if (recreateTimer) return;
  const generation = currentGeneration();
  const delay = recreateDelay * (0.8 + Math.random() * 0.4); // jitter: no stampede
  recreateDelay = Math.min(recreateDelay * 2, MAX_RECREATE_MS);
  recreateTimer = setTimeout(async () => {
    recreateTimer = null;
    try {
      await api("GET", "/api/me"); // a refused identity closes a stream too
    } catch (err) {
      if (await handleAuth(err)) return;
    }
    if (isCurrent(generation) && !source) openSource();
  }, delay);
}

// -- polling, when there is no stream ---------------------------------------------------

function startPolling(reason) {
  if (polling) return; // already polling: its own rounds say whether the server answers
  polling = true;
  pollReason = reason;
  setMode("polling", reason);
  pollSoon(0);
}

function stopPolling() {
  polling = false;
  clearTimeout(pollTimer);
  pollTimer = null;
}

function pollSoon(delay) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(pollOnce, delay);
}

async function pollOnce() {
  if (!polling) return;
  const generation = currentGeneration();
  try {
    await conversation.fetchNewer();
    await chats.load();
    if (polling) setMode("polling", pollReason);
  } catch (err) {
    if (await handleAuth(err)) return;
    if (polling) setMode("offline"); // the server is away: try again on the next round
  }
  if (polling && isCurrent(generation)) pollSoon(POLL_MS);
}
