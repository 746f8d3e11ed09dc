// ocs-web: what every page shares. Plain JavaScript, no build step.
"use strict";

const OCS = {
  me: null,
  // Server clock minus ours, from health events: heartbeat ages use the server's clock.
  clockOffset: 0,
  OP_NAMES: { 1: "none", 2: "starting", 3: "running", 4: "stopping", 5: "succeeded", 6: "failed", 7: "expired", 8: "degraded" },
  STATUS_NAMES: { 0: "OK", [-1]: "ERROR", 1: "TIMEOUT" },

  async whoami() {
    const reply = await fetch("/api/me", { credentials: "same-origin" });
    if (reply.status === 401) { location.href = "/login"; return null; }
    OCS.me = await reply.json();
    const who = document.getElementById("who");
    if (who) who.textContent = `${OCS.me.user} (${OCS.me.role})`;
    const logout = document.getElementById("logout");
    if (logout) logout.onclick = async () => {
      await OCS.post("/logout", null);
      location.href = "/login";
    };
    return OCS.me;
  },

  async post(url, body) {
    const reply = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": OCS.me ? OCS.me.csrf : "" },
      body: body === null ? undefined : JSON.stringify(body),
    });
    const text = await reply.text();
    let value = null;
    try { value = text ? JSON.parse(text) : null; } catch (_) { value = { error: text }; }
    return { ok: reply.ok, status: reply.status, value };
  },

  now() { return Date.now() / 1000 + OCS.clockOffset; },

  age(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "–";
    if (seconds < 60) return `${seconds.toFixed(0)} s`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  },

  // The banner: the connection to the board, then the feed's health.
  connectionLost: false,
  lastHealth: null,
  showBanner() {
    const banner = document.getElementById("banner");
    if (!banner) return;
    let text = "";
    const health = OCS.lastHealth;
    if (OCS.connectionLost) {
      text = "Connection to the board lost: reconnecting… What you see may be out of date.";
    } else if (health && health.stale) {
      const reasons = [];
      if (!health.nats_connected) reasons.push("the board is not connected to NATS");
      if (!health.registry_reachable) reasons.push("the registry does not answer");
      if (health.feed_age === null) reasons.push("no feed message yet");
      else if (health.feed_age > 0 && health.registry_reachable && health.nats_connected)
        reasons.push(`no feed message for ${OCS.age(health.feed_age)}`);
      text = `Stale: ${reasons.join("; ")}. What you see may be out of date.`;
    }
    banner.textContent = text;
    banner.classList.toggle("shown", text !== "");
  },

  // Follows the board's events; EventSource reconnects by itself, and every
  // (re)connection starts with the whole fleet.
  follow(onFleet, onHealth) {
    const source = new EventSource("/api/events");
    source.onopen = () => { OCS.connectionLost = false; OCS.showBanner(); };
    source.onerror = () => { OCS.connectionLost = true; OCS.showBanner(); };
    source.addEventListener("fleet", (event) => onFleet(JSON.parse(event.data)));
    source.addEventListener("health", (event) => {
      const health = JSON.parse(event.data);
      OCS.clockOffset = health.now - Date.now() / 1000;
      OCS.lastHealth = health;
      OCS.connectionLost = false;
      OCS.showBanner();
      if (onHealth) onHealth(health);
    });
    return source;
  },

  // A reply as OCS's client prints it (and `ocs` does).
  renderReply(reply) {
    if (!reply) return "";
    if (reply.error) return `ERROR : ${reply.error}`;
    const lines = [`${OCS.STATUS_NAMES[reply.status] ?? reply.status} : ${reply.message}`];
    const session = reply.session || {};
    if (Object.keys(session).length) lines.push(...OCS.renderSession(session));
    return lines.join("\n");
  },

  renderSession(session) {
    const lines = [];
    const end = session.end_time ?? OCS.now();
    lines.push(`  ${session.op_name}[session=${session.session_id}]; status=${session.status} for ` +
      `${(end - session.start_time).toFixed(1)} s; op_code=${(OCS.OP_NAMES[session.op_code] || "?").toUpperCase()}; ` +
      `success=${session.success}`);
    if (session.data && Object.keys(session.data).length)
      lines.push(`  data: ${JSON.stringify(session.data, null, 2).replace(/\n/g, "\n  ")}`);
    const messages = session.messages || [];
    if (messages.length) {
      lines.push("  messages:");
      for (const [at, text] of messages.slice(-10))
        lines.push(`    ${new Date(at * 1000).toISOString()} ${text}`);
    }
    return lines;
  },

  el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  },
};
