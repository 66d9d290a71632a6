// Times and days as people in Lima read them, whatever the browser's own time zone.

function formatter(options) {
  try {
    return new Intl.DateTimeFormat("es-PE", Object.assign({ timeZone: "America/Lima" }, options));
  } catch (_) {
    return null; // no time zone data: the server's -05:00 text is Lima time already
  }
}

const HOUR = formatter({ hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const DAY = formatter({ day: "2-digit", month: "2-digit", year: "numeric" });
const LONG_DAY = formatter({ weekday: "long", day: "numeric", month: "long", year: "numeric" });

function valid(iso) {
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? null : moment;
}

export function hour(iso) {
  const moment = valid(iso);
  if (HOUR && moment) return HOUR.format(moment);
  const match = /T(\d\d:\d\d)/.exec(iso || "");
  return match ? match[1] : "";
}

export function day(iso) {
  const moment = valid(iso);
  if (DAY && moment) return DAY.format(moment);
  return (iso || "").slice(0, 10);
}

/** A list time: the hour today, the date before. */
export function when(iso) {
  const date = day(iso);
  return date === day(new Date().toISOString()) ? hour(iso) : date.slice(0, 5);
}

/** A moment's formatted parts by type, e.g. {weekday: "lunes", day: "30", month: "noviembre"}. */
function parts(format, moment) {
  const found = {};
  for (const part of format.formatToParts(moment)) found[part.type] = part.value;
  return found;
}

/** The Lima day of a moment as "YYYY-MM-DD" (messages of one day share it). */
export function dayKey(iso) {
  const moment = valid(iso);
  if (!DAY || !moment) return (iso || "").slice(0, 10);
  const p = parts(DAY, moment);
  return `${p.year}-${p.month}-${p.day}`;
}

function dayBefore(key) {
  const [y, m, d] = key.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d - 1)).toISOString().slice(0, 10);
}

/** A day separator: "Hoy", "Ayer", "lunes 30 de noviembre", with the year when not this one. */
export function dayLabel(iso) {
  const key = dayKey(iso);
  const today = dayKey(new Date().toISOString());
  if (key === today) return "Hoy";
  if (key === dayBefore(today)) return "Ayer";
  const moment = valid(iso);
  if (!LONG_DAY || !moment) return key;
  const p = parts(LONG_DAY, moment);
  const label = `${p.weekday} ${p.day} de ${p.month}`;
  return key.slice(0, 4) === today.slice(0, 4) ? label : `${label} de ${p.year}`;
}

/** The full date and hour, for a message's tooltip: "lunes 30 de noviembre de 2026, 20:07". */
export function fullDate(iso) {
  const moment = valid(iso);
  if (!LONG_DAY || !moment) return day(iso) + " " + hour(iso);
  const p = parts(LONG_DAY, moment);
  return `${p.weekday} ${p.day} de ${p.month} de ${p.year}, ${hour(iso)}`;
}
