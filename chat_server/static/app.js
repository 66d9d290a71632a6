// chat_server's browser client: plain JavaScript, no build step.
//
// One EventSource on the per-user stream carries every chat (messages, new DMs, presence,
// read markers). When EventSource is missing or keeps failing, the page polls every 3 seconds
// instead and says so. Identity: the login cookie when the server sets one, else the token
// from the login answer (kept in sessionStorage, sent as a Bearer header and as ?token= on
// the EventSource URL). Text from the server is only ever set with textContent.
"use strict";

(() => {
  const POLL_MS = 3000; // the seed's polling period
  const PAGE = 50; // messages per history page
  const POLL_PAGE = 200; // the API's largest page
  const FAILURES_BEFORE_POLLING = 3; // stream errors in a row before polling takes over
  const FIRST_RECREATE_MS = 1000; // a closed EventSource is made again after this, doubling...
  const MAX_RECREATE_MS = 30000; // ...up to this
  const READ_DELAY_MS = 150; // read markers of a burst of messages go out as one request
  const NEAR_BOTTOM_PX = 80; // closer than this to the end: follow new messages
  const NEAR_TOP_PX = 120; // closer than this to the top: load older messages
  const SESSION_KEY = "chat.sesion";
  const OPEN_KEY = "chat.abierto";

  const $ = (id) => document.getElementById(id);
  const el = {
    ingreso: $("ingreso"),
    formIngreso: $("form-ingreso"),
    nombre: $("nombre"),
    campoClave: $("campo-clave"),
    clave: $("clave"),
    entrar: $("entrar"),
    errorIngreso: $("error-ingreso"),
    app: $("app"),
    yo: $("yo"),
    conexion: $("conexion"),
    salir: $("salir"),
    aviso: $("aviso"),
    chats: $("chats"),
    volver: $("volver"),
    titulo: $("titulo"),
    subtitulo: $("subtitulo"),
    mensajes: $("mensajes"),
    historial: $("historial"),
    listaMensajes: $("lista-mensajes"),
    vacio: $("vacio"),
    composer: $("composer"),
    texto: $("texto"),
    enviar: $("enviar"),
    errorEnvio: $("error-envio"),
  };

  const MODES = {
    connecting: "Conectando…",
    connected: "En vivo",
    reconnecting: "Reconectando…",
    polling: "Actualizando cada 3 s",
  };

  const state = {
    me: null,
    token: null,
    generation: 0, // bumped on logout: late answers of an old session are ignored
    chats: new Map(), // id -> {id, type, name, participants, last_message, unread, seen, lastRead}
    listLoaded: false,
    openId: null,
    openGeneration: 0,
    historyLoaded: false,
    shown: new Map(), // message id -> <li>, for the open chat
    oldestId: null,
    newestId: 0,
    hasOlder: false,
    loadingOlder: false,
    sending: false,
    lastEventId: 0, // the newest message id heard on the stream: where a new stream resumes
    source: null,
    failures: 0,
    recreateTimer: null,
    recreateDelay: FIRST_RECREATE_MS,
    polling: false,
    pollReason: "",
    pollTimer: null,
    mode: "connecting",
    readSent: new Map(), // chat id -> highest marker the server confirmed
    readPending: new Map(),
    readTimer: null,
    chatsTimer: null,
    relogging: false,
  };

  // -- talking to the server ---------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init); // a network failure throws a TypeError
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, (data && data.error) || response.statusText);
    return data;
  }

  /** A refused identity: log in again by name (passwordless), else back to the login form. */
  async function handleAuth(err) {
    if (!(err instanceof ApiError) || err.status !== 401) return false;
    if (state.relogging) return true;
    state.relogging = true;
    const generation = state.generation;
    const username = state.me && state.me.username;
    try {
      if (username) {
        // E.g. the server restarted with a new secret: a fresh token for the same name.
        state.token = null;
        adoptSession(await api("POST", "/api/login", { username }));
        if (generation === state.generation) openSource();
        return true;
      }
    } catch (_) {
      // an admin password, or strict mode: the person has to log in
    } finally {
      state.relogging = false;
    }
    await logout(true, "Tu sesión terminó; vuelve a entrar.");
    return true;
  }

  function adoptSession(answer) {
    state.me = answer.user;
    state.token = answer.token || null;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user: state.me, token: state.token }));
    if (el.yo) el.yo.textContent = state.me.username;
  }

  function readSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      return saved && saved.user ? saved : null;
    } catch (_) {
      return null;
    }
  }

  /** Whether a login cookie identifies us (then no token needs to be kept in the page). */
  async function cookieIdentifies() {
    try {
      const response = await fetch("/api/me", { credentials: "same-origin", headers: { Accept: "application/json" } });
      return response.ok;
    } catch (_) {
      return false;
    }
  }

  // -- login and logout --------------------------------------------------------

  function showLogin(message) {
    el.app.hidden = true;
    el.ingreso.hidden = false;
    el.errorIngreso.textContent = message || "";
    el.nombre.focus();
  }

  el.formIngreso.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const username = el.nombre.value.trim();
    if (!username) {
      el.errorIngreso.textContent = "Escribe tu nombre.";
      return;
    }
    const body = { username };
    if (!el.campoClave.hidden && el.clave.value) body.password = el.clave.value;
    el.entrar.disabled = true;
    el.errorIngreso.textContent = "";
    try {
      state.token = null;
      const answer = await api("POST", "/api/login", body);
      adoptSession(answer);
      if (answer.token && (await cookieIdentifies())) {
        state.token = null; // the HttpOnly cookie is enough: keep no token where scripts see it
        adoptSession({ user: answer.user, token: null });
      }
      el.clave.value = "";
      await start();
    } catch (err) {
      el.errorIngreso.textContent = loginError(err);
      if (err instanceof ApiError && err.status === 401) {
        el.campoClave.hidden = false;
        el.clave.focus();
      }
    } finally {
      el.entrar.disabled = false;
    }
  });

  function loginError(err) {
    if (!(err instanceof ApiError)) return "No se pudo conectar con el servidor.";
    if (err.status === 401) return el.clave.value ? "Contraseña incorrecta." : "Este nombre necesita contraseña.";
    if (err.status === 429) return "Demasiados intentos; espera un momento.";
    if (err.status === 400) return "Ese nombre no es válido (máximo 100 caracteres).";
    return "No se pudo entrar (" + err.status + ").";
  }

  el.salir.addEventListener("click", () => logout(false));

  async function logout(local, message) {
    state.generation += 1;
    closeSource();
    stopPolling();
    clearTimeout(state.recreateTimer);
    clearTimeout(state.readTimer);
    clearTimeout(state.chatsTimer);
    if (!local) {
      try {
        await api("POST", "/api/logout");
      } catch (_) {
        // stateless on the server: forgetting the session here is what counts
      }
    }
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(OPEN_KEY);
    Object.assign(state, {
      me: null,
      token: null,
      chats: new Map(),
      listLoaded: false,
      openId: null,
      lastEventId: 0,
      failures: 0,
      recreateTimer: null,
      recreateDelay: FIRST_RECREATE_MS,
      readSent: new Map(),
      readPending: new Map(),
      readTimer: null,
    });
    clearConversation();
    el.chats.replaceChildren();
    showLogin(message);
  }

  // -- start-up ------------------------------------------------------------------

  async function boot() {
    const saved = readSession();
    if (saved) {
      state.me = saved.user;
      state.token = saved.token || null;
    } else {
      try {
        state.me = (await api("GET", "/api/me")).user; // a login cookie from an earlier visit
      } catch (_) {
        showLogin();
        return;
      }
    }
    await start();
  }

  async function start() {
    const generation = ++state.generation;
    el.ingreso.hidden = true;
    el.app.hidden = false;
    el.yo.textContent = state.me.username;
    setMode("connecting");
    try {
      await loadChats();
    } catch (err) {
      if (await handleAuth(err)) return;
    }
    if (generation !== state.generation) return;
    // Subscribe from the chat list's newest message: nothing between the two is missed.
    for (const chat of state.chats.values()) state.lastEventId = Math.max(state.lastEventId, chat.seen);
    connect();
    const remembered = Number(sessionStorage.getItem(OPEN_KEY));
    if (remembered && state.chats.has(remembered)) openChat(remembered);
  }

  // -- the stream, and polling when there is none --------------------------------

  function connect() {
    if (typeof window.EventSource !== "function") {
      startPolling("sin-eventsource");
      return;
    }
    openSource();
  }

  function openSource() {
    closeSource();
    clearTimeout(state.recreateTimer);
    state.recreateTimer = null;
    if (typeof window.EventSource !== "function") return;
    const params = new URLSearchParams();
    if (state.token) params.set("token", state.token);
    // The browser sends Last-Event-ID on its own reconnects; a new EventSource needs this.
    // Even 0: then whatever was posted to our (empty) chats since the list was read comes too.
    params.set("last_event_id", String(state.lastEventId));
    const query = params.toString();
    const source = new EventSource("/api/stream" + (query ? "?" + query : ""));
    state.source = source;
    source.onopen = () => {
      if (state.source !== source) return;
      const recovering = state.failures > 0 || state.polling || !state.listLoaded;
      state.failures = 0;
      state.recreateDelay = FIRST_RECREATE_MS;
      stopPolling();
      setMode("connected");
      // Messages come back by replay; new chats, presence and markers are re-read.
      if (recovering) loadChats().catch(handleAuth);
    };
    source.onerror = () => {
      if (state.source !== source) return;
      state.failures += 1;
      // CLOSED: the server answered with an error (or not a stream); the browser gave up.
      if (source.readyState === EventSource.CLOSED) scheduleRecreate();
      if (state.failures >= FAILURES_BEFORE_POLLING) startPolling("falla");
      else if (!state.polling) setMode("reconnecting");
    };
    source.addEventListener("message", (e) => {
      const message = parse(e.data);
      if (!message) return;
      const id = Number(e.lastEventId);
      if (Number.isInteger(id) && id > state.lastEventId) state.lastEventId = id;
      receive(message);
    });
    source.addEventListener("chat", (e) => addChat(parse(e.data)));
    source.addEventListener("presence", (e) => presence(parse(e.data)));
    source.addEventListener("read", (e) => applyRead(parse(e.data)));
    source.addEventListener("reset", (e) => {
      // Too far behind to replay: reload what is on screen.
      const id = Number(e.lastEventId);
      if (Number.isInteger(id) && id > state.lastEventId) state.lastEventId = id;
      loadChats().catch(handleAuth);
      if (state.openId !== null) openChat(state.openId);
    });
  }

  function closeSource() {
    if (state.source) state.source.close();
    state.source = null;
  }

  function scheduleRecreate() {
    closeSource();
    if (state.recreateTimer) return;
    const generation = state.generation;
    const delay = state.recreateDelay * (0.8 + Math.random() * 0.4); // jitter: no stampede
    state.recreateDelay = Math.min(state.recreateDelay * 2, MAX_RECREATE_MS);
    state.recreateTimer = setTimeout(async () => {
      state.recreateTimer = null;
      try {
        await api("GET", "/api/me"); // a refused identity closes a stream too
      } catch (err) {
        if (await handleAuth(err)) return;
      }
      if (generation === state.generation && !state.source) openSource();
    }, delay);
  }

  function startPolling(reason) {
    state.pollReason = reason;
    setMode("polling");
    if (state.polling) return;
    state.polling = true;
    pollSoon(0);
  }

  function stopPolling() {
    state.polling = false;
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  function pollSoon(delay) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(pollOnce, delay);
  }

  async function pollOnce() {
    if (!state.polling) return;
    const generation = state.generation;
    try {
      if (state.openId !== null && state.historyLoaded) await fetchNewer(state.openId);
      await loadChats();
    } catch (err) {
      if (await handleAuth(err)) return;
      // the server is away: try again on the next round
    }
    if (state.polling && generation === state.generation) pollSoon(POLL_MS);
  }

  async function fetchNewer(chatId) {
    for (;;) {
      const path = `/api/messages?chat_id=${chatId}&after_id=${state.newestId}&limit=${POLL_PAGE}`;
      const answer = await api("GET", path);
      if (state.openId !== chatId) return;
      answer.messages.forEach(receive);
      if (answer.messages.length < POLL_PAGE) return;
    }
  }

  function setMode(mode) {
    state.mode = mode;
    el.conexion.dataset.state = mode;
    el.conexion.textContent = MODES[mode];
    el.aviso.hidden = mode !== "polling";
    if (mode === "polling") {
      el.aviso.textContent =
        state.pollReason === "sin-eventsource"
          ? "Este navegador no recibe mensajes en vivo: la página se actualiza cada 3 segundos."
          : "La conexión en vivo falla: la página se actualiza cada 3 segundos mientras se reintenta.";
    }
  }

  function parse(data) {
    try {
      return JSON.parse(data);
    } catch (_) {
      return null;
    }
  }

  // -- chats, unread counts and presence ----------------------------------------

  async function loadChats() {
    const generation = state.generation;
    const answer = await api("GET", "/api/chats");
    if (generation === state.generation) applyChatList(answer.chats);
  }

  function reloadChatsSoon() {
    clearTimeout(state.chatsTimer);
    state.chatsTimer = setTimeout(() => loadChats().catch(handleAuth), 300);
  }

  function applyChatList(list) {
    const next = new Map();
    const toMark = [];
    for (const c of list) {
      const old = state.chats.get(c.id);
      const chat = chatFromApi(c, old ? old.lastRead : 0);
      if (old && old.seen > chat.seen) {
        // The stream brought messages after this list was read: keep what they counted.
        Object.assign(chat, { last_message: old.last_message, unread: old.unread, seen: old.seen });
      }
      if (chat.unread > 0 && isReading(chat.id)) toMark.push(chat);
      next.set(chat.id, chat);
    }
    state.chats = next;
    state.listLoaded = true;
    for (const chat of toMark) markRead(chat.id, chat.seen);
    renderChats();
  }

  function addChat(c) {
    if (!c || state.chats.has(c.id)) return;
    state.chats.set(c.id, chatFromApi(c, 0));
    renderChats();
  }

  // A chat as the page keeps it, from the API's chat object (C).
  function chatFromApi(c, lastRead) {
    return {
      id: c.id,
      type: c.type,
      name: c.name,
      participants: c.participants || [],
      last_message: c.last_message,
      unread: c.unread || 0,
      seen: c.last_message ? c.last_message.id : 0,
      lastRead,
    };
  }

  function presence(change) {
    if (!change) return;
    for (const chat of state.chats.values()) {
      for (const p of chat.participants) if (p.id === change.user_id) p.online = Boolean(change.online);
    }
    renderChats();
    if (state.openId !== null) renderTitle(state.chats.get(state.openId));
  }

  /** A message from the stream, a poll or our own post. */
  function receive(m) {
    const chat = state.chats.get(m.chat_id);
    if (!chat) {
      reloadChatsSoon(); // a chat we have not heard of yet
      return;
    }
    if (m.id > chat.seen) {
      chat.seen = m.id;
      chat.last_message = m;
      if (m.sender_id !== state.me.id && m.id > chat.lastRead) {
        if (isReading(chat.id)) markRead(chat.id, m.id);
        else chat.unread += 1;
      }
      renderChats();
    }
    if (chat.id === state.openId) showMessages([m]);
  }

  function isReading(chatId) {
    return chatId === state.openId && document.visibilityState === "visible";
  }

  function markRead(chatId, id) {
    const chat = state.chats.get(chatId);
    if (chat) {
      chat.unread = 0;
      renderChats();
    }
    if (!id || id <= (state.readSent.get(chatId) || 0)) return;
    state.readPending.set(chatId, Math.max(id, state.readPending.get(chatId) || 0));
    if (!state.readTimer) state.readTimer = setTimeout(flushReads, READ_DELAY_MS);
  }

  async function flushReads() {
    state.readTimer = null;
    const pending = [...state.readPending];
    state.readPending.clear();
    for (const [chatId, id] of pending) {
      try {
        const marker = await api("POST", `/api/chats/${chatId}/read`, { last_read_id: id });
        state.readSent.set(chatId, Math.max(marker.last_read_id, state.readSent.get(chatId) || 0));
        applyRead(marker);
      } catch (err) {
        if (await handleAuth(err)) return;
        // not stored: the next message or chat list in this chat asks again
      }
    }
  }

  /** A read marker: ours, or from another tab of ours (`event: read`). */
  function applyRead(marker) {
    const chat = marker && state.chats.get(marker.chat_id);
    if (!chat) return;
    chat.lastRead = Math.max(chat.lastRead, marker.last_read_id);
    if (isReading(chat.id) || marker.last_read_id >= chat.seen) chat.unread = 0;
    else if (typeof marker.unread === "number") chat.unread = marker.unread;
    renderChats();
  }

  document.addEventListener("visibilitychange", () => {
    if (state.openId === null || document.visibilityState !== "visible") return;
    const chat = state.chats.get(state.openId);
    if (chat && chat.unread > 0) markRead(chat.id, Math.max(chat.seen, state.newestId));
  });

  // -- drawing the chat list -----------------------------------------------------

  function chatName(chat) {
    if (chat.type === "general") return chat.name || "General";
    const others = chat.participants.filter((p) => p.id !== state.me.id);
    return others.length ? others.map((p) => p.username).join(", ") : chat.name || "Conversación";
  }

  function partner(chat) {
    if (chat.type !== "dm") return null;
    return chat.participants.find((p) => p.id !== state.me.id) || null;
  }

  function sortedChats() {
    const chats = [...state.chats.values()];
    const rank = (c) => (c.type === "general" ? 0 : 1);
    return chats.sort((a, b) => rank(a) - rank(b) || b.seen - a.seen || a.id - b.id);
  }

  function span(className, text) {
    const node = document.createElement("span");
    node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function preview(chat) {
    const m = chat.last_message;
    if (!m) return "Sin mensajes";
    const who = m.sender_id === state.me.id ? "Tú: " : chat.type === "general" ? (m.username || "?") + ": " : "";
    return who + m.contenido.replace(/\s+/g, " ").slice(0, 120);
  }

  function renderChats() {
    const items = sortedChats().map((chat) => {
      const name = chatName(chat);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chat " + chat.type + (chat.unread > 0 ? " sin-leer" : "");
      button.dataset.chatId = String(chat.id);
      button.setAttribute("aria-current", chat.id === state.openId ? "true" : "false");
      const avatar = span("avatar", (Array.from(name)[0] || "?").toUpperCase());
      const other = partner(chat);
      if (other) {
        const dot = span("punto" + (other.online ? " en-linea" : ""));
        dot.title = other.online ? "En línea" : "Desconectado";
        dot.setAttribute("aria-label", dot.title);
        avatar.appendChild(dot);
      }
      button.append(
        avatar,
        span("nombre", name),
        span("cuando", chat.last_message ? when(chat.last_message.timestamp) : ""),
        span("vista", preview(chat)),
      );
      if (chat.unread > 0) {
        const badge = span("insignia", chat.unread > 99 ? "99+" : String(chat.unread));
        badge.setAttribute("aria-label", chat.unread + " sin leer");
        button.appendChild(badge);
      }
      button.addEventListener("click", () => openChat(chat.id));
      const item = document.createElement("li");
      item.appendChild(button);
      return item;
    });
    el.chats.replaceChildren(...items);
  }

  // -- the open conversation -----------------------------------------------------

  function clearConversation() {
    state.openGeneration += 1;
    state.shown = new Map();
    state.oldestId = null;
    state.newestId = 0;
    state.hasOlder = false;
    state.historyLoaded = false;
    el.listaMensajes.replaceChildren();
    el.historial.hidden = true;
    el.composer.hidden = true;
    el.vacio.hidden = false;
    el.errorEnvio.textContent = "";
    el.titulo.textContent = "Elige una conversación";
    el.subtitulo.textContent = "";
  }

  function renderTitle(chat) {
    if (!chat) return;
    el.titulo.textContent = chatName(chat);
    const other = partner(chat);
    el.subtitulo.textContent = other ? (other.online ? "En línea" : "Desconectado") : "Todos los usuarios";
  }

  async function openChat(id) {
    const chat = state.chats.get(id);
    if (!chat) return;
    clearConversation();
    const generation = state.openGeneration;
    state.openId = id;
    sessionStorage.setItem(OPEN_KEY, String(id));
    el.app.dataset.view = "chat";
    el.vacio.hidden = true;
    el.composer.hidden = false;
    renderTitle(chat);
    renderChats();
    note("Cargando mensajes…");
    try {
      const answer = await api("GET", `/api/messages?chat_id=${id}&limit=${PAGE}`);
      if (generation !== state.openGeneration) return;
      showMessages(answer.messages);
      state.hasOlder = answer.messages.length === PAGE;
      state.historyLoaded = true;
      scrollToEnd();
      if (isReading(id)) markRead(id, Math.max(state.newestId, chat.seen));
      fillScreen();
    } catch (err) {
      if (await handleAuth(err)) return;
      if (generation === state.openGeneration) note("No se pudieron cargar los mensajes.");
      return;
    }
    noteHistory();
    if (window.matchMedia("(min-width: 721px)").matches) el.texto.focus();
  }

  el.volver.addEventListener("click", () => {
    state.openId = null;
    sessionStorage.removeItem(OPEN_KEY);
    clearConversation();
    el.app.dataset.view = "lista";
    renderChats();
  });

  function note(text) {
    el.historial.textContent = text;
    el.historial.hidden = false;
  }

  function noteHistory() {
    if (state.hasOlder) note("Desliza hacia arriba para ver mensajes anteriores.");
    else if (state.shown.size) note("Inicio de la conversación.");
    else note("Aún no hay mensajes. ¡Escribe el primero!");
  }

  function nearEnd() {
    const box = el.mensajes;
    return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToEnd() {
    el.mensajes.scrollTop = el.mensajes.scrollHeight;
  }

  /** Add messages to the open chat in id order, each once. */
  function showMessages(messages) {
    const follow = nearEnd();
    let mine = false;
    for (const m of messages) {
      if (m.chat_id !== state.openId || state.shown.has(m.id)) continue;
      const item = messageItem(m);
      state.shown.set(m.id, item);
      if (m.id > state.newestId) {
        el.listaMensajes.appendChild(item);
      } else {
        const after = [...el.listaMensajes.children].find((node) => Number(node.dataset.id) > m.id);
        el.listaMensajes.insertBefore(item, after || null);
      }
      state.newestId = Math.max(state.newestId, m.id);
      state.oldestId = state.oldestId === null ? m.id : Math.min(state.oldestId, m.id);
      mine = mine || m.sender_id === state.me.id;
    }
    if (state.historyLoaded && (follow || mine)) scrollToEnd();
    if (state.historyLoaded && !state.hasOlder) noteHistory();
  }

  function messageItem(m) {
    const item = document.createElement("li");
    item.className = "msg" + (m.sender_id === state.me.id ? " mio" : "");
    item.dataset.id = String(m.id);
    const meta = document.createElement("div");
    meta.className = "meta";
    const time = document.createElement("time");
    time.dateTime = m.timestamp;
    time.textContent = hour(m.timestamp);
    time.title = day(m.timestamp) + " " + hour(m.timestamp);
    meta.append(span("autor", m.sender_id === state.me.id ? "Tú" : m.username || "?"), time);
    const text = document.createElement("div");
    text.className = "texto";
    text.textContent = m.contenido; // never innerHTML: message text is text
    item.append(meta, text);
    return item;
  }

  async function loadOlder() {
    if (!state.hasOlder || state.loadingOlder || state.oldestId === null || !state.historyLoaded) return;
    state.loadingOlder = true;
    const chatId = state.openId;
    const generation = state.openGeneration;
    const box = el.mensajes;
    note("Cargando mensajes anteriores…");
    try {
      const path = `/api/messages?chat_id=${chatId}&before_id=${state.oldestId}&limit=${PAGE}`;
      const answer = await api("GET", path);
      if (generation !== state.openGeneration) return;
      const fromEnd = box.scrollHeight - box.scrollTop;
      showMessages(answer.messages);
      state.hasOlder = answer.messages.length === PAGE;
      box.scrollTop = box.scrollHeight - fromEnd; // the same messages stay in view
    } catch (err) {
      await handleAuth(err);
    } finally {
      state.loadingOlder = false;
      if (generation === state.openGeneration) noteHistory();
    }
    fillScreen();
  }

  /** With too few messages to scroll, older ones load at once. */
  function fillScreen() {
    if (state.hasOlder && el.mensajes.scrollHeight <= el.mensajes.clientHeight) loadOlder();
  }

  el.mensajes.addEventListener("scroll", () => {
    if (el.mensajes.scrollTop < NEAR_TOP_PX) loadOlder();
  });

  // -- writing -------------------------------------------------------------------

  el.texto.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      el.composer.requestSubmit();
    }
  });

  el.texto.addEventListener("input", () => {
    el.texto.style.height = "auto";
    el.texto.style.height = el.texto.scrollHeight + 2 + "px";
  });

  el.composer.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = el.texto.value;
    const chatId = state.openId;
    if (!text.trim() || chatId === null || state.sending) return;
    state.sending = true;
    el.enviar.disabled = true;
    el.errorEnvio.textContent = "";
    try {
      const answer = await api("POST", "/api/messages", { chat_id: chatId, contenido: text });
      if (state.openId === chatId) {
        el.texto.value = "";
        el.texto.style.height = "";
      }
      receive(answer.message);
    } catch (err) {
      if (!(await handleAuth(err))) el.errorEnvio.textContent = sendError(err);
    } finally {
      state.sending = false;
      el.enviar.disabled = false;
    }
  });

  function sendError(err) {
    if (!(err instanceof ApiError)) return "Sin conexión: no se pudo enviar. Inténtalo de nuevo.";
    if (err.status === 429) return "Estás enviando demasiado rápido; espera un momento.";
    if (err.status === 400) return "No se pudo enviar: el texto no es válido (¿demasiado largo?).";
    if (err.status === 403) return "No participas en esta conversación.";
    return "No se pudo enviar (" + err.status + ").";
  }

  // -- Lima time -----------------------------------------------------------------

  function formatter(options) {
    try {
      return new Intl.DateTimeFormat("es-PE", Object.assign({ timeZone: "America/Lima" }, options));
    } catch (_) {
      return null; // no time zone data: the server's -05:00 text is Lima time already
    }
  }

  const HOUR = formatter({ hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const DAY = formatter({ day: "2-digit", month: "2-digit", year: "numeric" });

  function hour(iso) {
    const moment = new Date(iso);
    if (HOUR && !Number.isNaN(moment.getTime())) return HOUR.format(moment);
    const match = /T(\d\d:\d\d)/.exec(iso || "");
    return match ? match[1] : "";
  }

  function day(iso) {
    const moment = new Date(iso);
    if (DAY && !Number.isNaN(moment.getTime())) return DAY.format(moment);
    return (iso || "").slice(0, 10);
  }

  /** A list time: the hour today, the date before. */
  function when(iso) {
    const date = day(iso);
    return date === day(new Date().toISOString()) ? hour(iso) : date.slice(0, 5);
  }

  boot();
})();
