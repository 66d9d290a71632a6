// What the page knows of its link to the server, shown where the person looks: in the chat
// list's header, inside the open conversation (also on a phone, where the list is not on
// screen), and as a banner while polling. While the link is down nothing is claimed live:
// presence dots are greyed out (see `isLive`) until the stream is back and the list re-read.
//
// State: the mode, one of MODES, set only by stream.js; "mode" is announced when it changes.

import { $ } from "./dom.js";
import { emit } from "./events.js";

const MODES = {
  connecting: "Conectando…",
  connected: "En vivo",
  reconnecting: "Reconectando…",
  polling: "Actualizando cada 3 s",
  offline: "Sin conexión",
};

const BANNERS = {
  "sin-eventsource": "Este navegador no recibe mensajes en vivo: la página se actualiza cada 3 segundos.",
  falla: "La conexión en vivo falla: la página se actualiza cada 3 segundos mientras se reintenta.",
  offline: "Sin conexión con el servidor: se reintenta cada 3 segundos.",
};

const el = { app: $("app"), conexion: $("conexion"), conexionChat: $("conexion-chat"), aviso: $("aviso") };

let mode = "connecting";

/** Whether what the page shows is current: the stream is open, or polling answers. */
export function isLive() {
  return mode === "connected" || mode === "polling";
}

/** `reason` says why the page polls ("sin-eventsource" or "falla"). */
export function setMode(next, reason) {
  const changed = next !== mode;
  mode = next;
  for (const indicator of [el.conexion, el.conexionChat]) {
    indicator.dataset.state = next;
    indicator.textContent = MODES[next];
  }
  el.conexionChat.hidden = next === "connected";
  el.app.dataset.live = String(isLive());
  const banner = next === "offline" ? BANNERS.offline : next === "polling" ? BANNERS[reason] : "";
  el.aviso.hidden = !banner;
  el.aviso.textContent = banner;
  if (changed) emit("mode", next);
}
