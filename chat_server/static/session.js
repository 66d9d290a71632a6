// Who is logged in: the login form, the saved session, a refused credential, "Salir".
//
// State: the user, and a generation bumped on every start and logout, so that late answers
// of an earlier session are ignored (`isCurrent(generation)`). Starting the app after a login
// belongs to app.js, which listens for "login"; the other modules drop their state on "logout".

import { $ } from "./dom.js";
import { api, ApiError, getToken, setToken } from "./api.js";
import { emit } from "./events.js";

const SESSION_KEY = "chat.sesion";
// Set while a login cookie may identify this browser. The cookie is HttpOnly (scripts cannot
// see it), and asking the server without one is a 401 that browsers log as an error: a page
// load without a session asks nothing.
const COOKIE_HINT_KEY = "chat.cookie";
// Logins that come in the address, used once and then dropped from it: a one-time link from
// the admin (/?login_code=...), or a host site vouching for its user (/?username=...&user_hash=...).
const LINK_PARAMS = ["login_code", "username", "user_hash"];

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
  salir: $("salir"),
};

let user = null;
let generation = 0;
let relogging = false;
let loginMessage = ""; // what the login form says when it shows (a link that did not work)

/** The logged-in user ({id, username, ...}), or null. */
export function me() {
  return user;
}

export function currentGeneration() {
  return generation;
}

export function isCurrent(expected) {
  return expected === generation;
}

function adoptSession(answer) {
  user = answer.user;
  setToken(answer.token);
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ user, token: getToken() }));
  localStorage.setItem(COOKIE_HINT_KEY, "1");
  el.yo.textContent = user.username;
}

function readSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    return saved && saved.user ? saved : null;
  } catch (_) {
    return null;
  }
}

/** After a login answer: keep no token in the page when the HttpOnly cookie identifies us. */
async function adoptLogin(answer) {
  adoptSession(answer);
  if (answer.token && (await cookieIdentifies())) {
    adoptSession({ user: answer.user, token: null });
  }
}

/** A login in the address (see LINK_PARAMS): used, then dropped from the address; null without one. */
async function loginWithLink() {
  const url = new URL(location.href);
  const given = Object.fromEntries(LINK_PARAMS.map((name) => [name, url.searchParams.get(name)]));
  let body = null;
  if (given.login_code) body = { login_code: given.login_code };
  else if (given.username && given.user_hash) body = { username: given.username, user_hash: given.user_hash };
  if (!body) return null;
  LINK_PARAMS.forEach((name) => url.searchParams.delete(name));
  history.replaceState(null, "", url);
  try {
    setToken(null);
    await adoptLogin(await api("POST", "/api/login", body));
    return true;
  } catch (_) {
    loginMessage = body.login_code
      ? "Este enlace de acceso ya se usó o caducó; pide otro al administrador."
      : "No se pudo comprobar quién eres; vuelve a entrar desde el sitio.";
    return false;
  }
}

/** On page load: a login link, else the session of this tab, else a login cookie from an earlier visit. */
export async function restore() {
  const linked = await loginWithLink();
  if (linked !== null) return linked;
  const saved = readSession();
  if (saved) {
    user = saved.user;
    setToken(saved.token);
    return true;
  }
  if (!localStorage.getItem(COOKIE_HINT_KEY)) return false;
  try {
    user = (await api("GET", "/api/me")).user;
    return true;
  } catch (_) {
    localStorage.removeItem(COOKIE_HINT_KEY); // it expired, or the server forgot it
    return false;
  }
}

/** A new run of the app for the current user: shows it and returns its generation. */
export function begin() {
  generation += 1;
  el.ingreso.hidden = true;
  el.app.hidden = false;
  el.yo.textContent = user.username;
  return generation;
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

/** A refused identity: log in again by name (passwordless), else back to the login form. */
export async function handleAuth(err) {
  if (!(err instanceof ApiError) || err.status !== 401) return false;
  if (relogging) return true;
  relogging = true;
  const started = generation;
  const username = user && user.username;
  try {
    if (username) {
      // E.g. the server restarted with a new secret: a fresh token for the same name.
      setToken(null);
      adoptSession(await api("POST", "/api/login", { username }));
      if (started === generation) emit("relogin");
      return true;
    }
  } catch (_) {
    // an admin password, or strict mode: the person has to log in
  } finally {
    relogging = false;
  }
  await logout(true, "Tu sesión terminó; vuelve a entrar.");
  return true;
}

// -- login and logout ----------------------------------------------------------

export function showLogin(message) {
  el.app.hidden = true;
  el.ingreso.hidden = false;
  el.errorIngreso.textContent = message || loginMessage;
  loginMessage = "";
  el.nombre.focus();
}

el.formIngreso.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  // The form is `novalidate`: the page says what is wrong, in Spanish, the same way for an
  // empty name and for one of spaces only.
  const username = el.nombre.value.trim();
  if (!username) {
    el.errorIngreso.textContent = el.nombre.value ? "El nombre no puede ser solo espacios." : "Escribe tu nombre.";
    el.nombre.setAttribute("aria-invalid", "true");
    el.nombre.focus();
    return;
  }
  el.nombre.removeAttribute("aria-invalid");
  const body = { username };
  if (!el.campoClave.hidden && el.clave.value) body.password = el.clave.value;
  el.entrar.disabled = true;
  el.errorIngreso.textContent = "";
  try {
    setToken(null);
    await adoptLogin(await api("POST", "/api/login", body));
    el.clave.value = "";
    emit("login");
  } catch (err) {
    el.errorIngreso.textContent = loginError(err);
    if (err instanceof ApiError && err.status === 409) offerAnother(username);
    if (err instanceof ApiError && err.status === 401) {
      el.campoClave.hidden = false;
      el.clave.focus();
    }
  } finally {
    el.entrar.disabled = false;
  }
});

/** CHAT_AUTH=strict: the name belongs to another client; suggest one close to it. */
function offerAnother(taken) {
  const other = taken.slice(0, 96) + "-" + String(10 + Math.floor(Math.random() * 90));
  el.errorIngreso.textContent =
    "«" + taken + "» ya tiene dueño en este servidor. Prueba con «" + other + "» " +
    "o pide al administrador un enlace de acceso.";
  el.nombre.value = other;
  el.nombre.select();
}

function loginError(err) {
  if (!(err instanceof ApiError)) return "No se pudo conectar con el servidor.";
  if (err.status === 401) return el.clave.value ? "Contraseña incorrecta." : "Este nombre necesita contraseña.";
  if (err.status === 429) return "Demasiados intentos; espera un momento.";
  if (err.status === 400) return "Ese nombre no es válido (máximo 100 caracteres).";
  return "No se pudo entrar (" + err.status + ").";
}

el.salir.addEventListener("click", () => logout(false));

/** End the session: every module drops its state ("logout"), then the login form shows. */
export async function logout(local, message) {
  generation += 1;
  emit("logout");
  if (!local) {
    try {
      await api("POST", "/api/logout");
    } catch (_) {
      // the server ends the session when it can; forgetting it here is what counts
    }
  }
  sessionStorage.removeItem(SESSION_KEY);
  localStorage.removeItem(COOKIE_HINT_KEY); // cleared by the server, or refused anyway
  user = null;
  setToken(null);
  el.nombre.value = "";
  el.clave.value = "";
  el.campoClave.hidden = true;
  showLogin(message);
}
