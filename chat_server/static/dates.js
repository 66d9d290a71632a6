// Times as people in Lima read them, whatever the browser's own time zone.

function formatter(options) {
  try {
    return new Intl.DateTimeFormat("es-PE", Object.assign({ timeZone: "America/Lima" }, options));
  } catch (_) {
    return null; // no time zone data: the server's -05:00 text is Lima time already
  }
}

const HOUR = formatter({ hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const DAY = formatter({ day: "2-digit", month: "2-digit", year: "numeric" });

export function hour(iso) {
  const moment = new Date(iso);
  if (HOUR && !Number.isNaN(moment.getTime())) return HOUR.format(moment);
  const match = /T(\d\d:\d\d)/.exec(iso || "");
  return match ? match[1] : "";
}

export function day(iso) {
  const moment = new Date(iso);
  if (DAY && !Number.isNaN(moment.getTime())) return DAY.format(moment);
  return (iso || "").slice(0, 10);
}

/** A list time: the hour today, the date before. */
export function when(iso) {
  const date = day(iso);
  return date === day(new Date().toISOString()) ? hour(iso) : date.slice(0, 5);
}
