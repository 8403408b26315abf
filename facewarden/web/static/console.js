// The console's pages: plain DOM + fetch against /api/v1 with the session cookie.
"use strict";
const $ = (s) => document.querySelector(s);
const page = document.body.dataset.page;

async function api(path, opts = {}) {
  const headers = { "X-Console": "1", ...(opts.headers || {}) };
  const r = await fetch(path, { credentials: "same-origin", ...opts, headers });
  if (!r.ok) {
    let msg = r.status + "";
    try { const j = await r.json(); msg = `${j.error}: ${j.message}`; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}
function say(text, bad) { const s = $("#status"); if (s) { s.textContent = text; s.className = bad ? "error" : "muted"; } }
function cell(row, text, cls) { const c = row.insertCell(); c.textContent = text ?? ""; if (cls) c.className = cls; return c; }
function b64ToBlob(b64, type) { const bin = atob(b64); const a = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i); return new Blob([a], { type }); }
async function startCamera(video) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  video.srcObject = stream; video.hidden = false; await video.play();
}
function snapshot(video) {
  const c = document.createElement("canvas"); c.width = video.videoWidth; c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  return new Promise((res) => c.toBlob(res, "image/jpeg", 0.92));
}

const pages = {
  async dashboard() {
    async function tick() {
      try {
        const s = await (await api("/console/stats")).json();
        $("#depth").textContent = s.queue_depth ?? "?"; $("#rate").textContent = s.per_minute;
        $("#ok").textContent = s.ok_15m; $("#fail").textContent = s.failures_15m;
        const tb = $("#recent tbody"); tb.textContent = "";
        for (const j of s.recent) {
          const r = tb.insertRow(); cell(r, j.seq); cell(r, j.at); cell(r, j.handler); cell(r, j.source);
          cell(r, j.outcome + (j.reason ? ` (${j.reason})` : ""), "outcome-" + j.outcome); cell(r, j.faces); cell(r, j.ms);
        }
      } catch (e) { /* keep the last figures */ }
    }
    await tick(); setInterval(tick, 3000);
  },

  try() {
    let lastFile = null, lastUrl = null;
    async function drawBoxes() {
      const canvas = $("#overlay"), img = $("#result"), ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (!$("#boxes").checked || !lastFile) return;
      const fd = new FormData(); fd.append("image", lastFile);
      const d = (await (await api("/api/v1/detect", { method: "POST", body: fd })).json()).result;
      canvas.width = d.width; canvas.height = d.height;
      ctx.lineWidth = Math.max(2, d.width / 300); ctx.strokeStyle = "#22c55e"; ctx.fillStyle = "#22c55e";
      ctx.font = `${Math.max(14, d.width / 60)}px sans-serif`;
      for (const f of d.faces) { ctx.strokeRect(f.x, f.y, f.w, f.h); ctx.fillText(f.score.toFixed(2), f.x, f.y - 4); }
      canvas.dataset.faces = d.faces.length; img.dataset.boxes = "drawn";
    }
    $("#try-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = new FormData(ev.target); lastFile = form.get("image");
      $("#original").src = URL.createObjectURL(lastFile);
      say("Working…");
      try {
        const r = await api("/api/v1/anonymize", { method: "POST", body: form });
        if (lastUrl) URL.revokeObjectURL(lastUrl);
        lastUrl = URL.createObjectURL(await r.blob());
        $("#result").src = lastUrl; $("#download").href = lastUrl; $("#download").hidden = false;
        say(`${r.headers.get("X-Faces")} face(s) obscured · audit record #${r.headers.get("X-Audit-Seq")}`);
        await drawBoxes();
      } catch (e) { say(e.message, true); }
    });
    $("#boxes").addEventListener("change", () => drawBoxes().catch((e) => say(e.message, true)));
  },

  studio() {
    $("#custom-colour").addEventListener("input", (ev) => {
      const sel = document.querySelector("select[name=background]");
      let o = sel.querySelector("option[data-custom]");
      if (!o) { o = new Option("custom", ""); o.dataset.custom = "1"; sel.add(o); }
      o.value = ev.target.value; o.textContent = ev.target.value; sel.value = ev.target.value;
    });
    $("#studio-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = new FormData(ev.target);
      if (!form.get("max_kb")) form.delete("max_kb");
      if (!form.get("sheet")) form.delete("sheet");
      say("Working…");
      try {
        const j = await (await api("/api/v1/idphoto?response=json", { method: "POST", body: form })).json();
        const [photo, sheet] = j.outputs;
        const url = URL.createObjectURL(b64ToBlob(photo.base64, photo.content_type));
        $("#result").src = url; $("#download").href = url; $("#download").hidden = false;
        $("#kb").textContent = `${(atob(photo.base64).length / 1024).toFixed(0)} KB`;
        $("#sheet-fig").hidden = !sheet;
        if (sheet) { const s = URL.createObjectURL(b64ToBlob(sheet.base64, sheet.content_type));
          $("#sheet").src = s; $("#sheet-download").href = s; }
        say(`audit record #${j.audit.seq}`);
      } catch (e) { say(e.message, true); }
    });
  },

  kiosk() {
    const video = $("#camera"), who = $("#who");
    async function check(blob) {
      who.textContent = "…";
      const fd = new FormData(); fd.append("image", blob, "checkin.jpg");
      try {
        const j = await (await api("/api/v1/checkin", { method: "POST", body: fd })).json();
        const known = j.result.known || [];
        who.textContent = known.length ? known.join(", ") : "unknown";
        who.className = "who-big " + (known.length ? "ok" : "error");
      } catch (e) { who.textContent = e.message.startsWith("input.") || e.message.includes("face") ? "no face found" : e.message; }
    }
    $("#start-camera").addEventListener("click", async () => {
      try { await startCamera(video); $("#snap").hidden = false; } catch (e) { who.textContent = "no camera: use a photo"; }
    });
    $("#snap").addEventListener("click", async () => check(await snapshot(video)));
    $("#kiosk-file").addEventListener("change", (ev) => ev.target.files[0] && check(ev.target.files[0]));
  },

  subjects() {
    const admin = document.body.dataset.admin === "yes", video = $("#camera");
    async function load() {
      const list = await (await api("/api/v1/subjects")).json();
      const tb = $("#subjects tbody"); tb.textContent = "";
      for (const s of list) {
        const r = tb.insertRow(); cell(r, s.id); cell(r, s.name);
        cell(r, Object.entries(s.embeddings).map(([b, n]) => `${b}: ${n}`).join(", "));
        cell(r, s.consent ? "yes" : "—");
        const c = r.insertCell();
        if (admin) {
          const ex = document.createElement("button"); ex.textContent = "Export";
          ex.onclick = async () => { const blob = await (await api(`/api/v1/subjects/${encodeURIComponent(s.id)}/export`)).blob();
            const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = `${s.id}.json`; a.click(); };
          const del = document.createElement("button"); del.textContent = "Erase"; del.className = "danger";
          del.dataset.subject = s.id;
          del.onclick = async () => {
            if (prompt(`Type "${s.id}" to erase this subject for good`) !== s.id) return;
            await api(`/api/v1/subjects/${encodeURIComponent(s.id)}`, { method: "DELETE" }); say(`erased ${s.id}`); load();
          };
          c.append(ex, " ", del);
        }
      }
    }
    let camBlob = null;
    $("#start-camera").addEventListener("click", async () => {
      if (video.hidden) { try { await startCamera(video); $("#start-camera").textContent = "Take photo"; } catch (e) { say("no camera", true); } }
      else { camBlob = await snapshot(video); say("photo taken"); }
    });
    $("#enroll-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target), fd = new FormData();
      const file = f.get("image"); const img = file && file.size ? file : camBlob;
      if (!img) { say("choose a photo or take one", true); return; }
      fd.append("image", img, "enroll.jpg");
      if (f.get("name")) fd.append("name", f.get("name"));
      fd.append("consent", $("#consent-text").textContent.trim().replace(/\s+/g, " "));
      try {
        const j = await (await api(`/api/v1/subjects/${encodeURIComponent(f.get("subject"))}/photos`, { method: "POST", body: fd })).json();
        say(`enrolled ${j.facts.subject} · audit record #${j.audit.seq}`); ev.target.reset(); camBlob = null; load();
      } catch (e) { say(e.message, true); }
    });
    load();
  },

  quarantine() {
    let current = null;
    async function load() {
      const list = await (await api("/api/v1/quarantine")).json();
      const tb = $("#quarantine tbody"); tb.textContent = "";
      for (const e of list) {
        const r = tb.insertRow(); cell(r, e.seq); cell(r, e.recorded_at); cell(r, `${e.code}: ${e.message}`); cell(r, e.input);
        const b = document.createElement("button"); b.textContent = "Review"; b.onclick = () => show(e.seq); r.insertCell().append(b);
      }
      if (!list.length) { const r = tb.insertRow(); cell(r, "The quarantine is empty.").colSpan = 5; }
    }
    async function show(seq) {
      current = seq;
      const j = await (await api(`/api/v1/quarantine/${seq}`)).json();
      $("#entry").hidden = false; $("#entry-seq").textContent = "#" + seq;
      $("#entry-reason").textContent = `${j.entry.code}: ${j.entry.message}`;
      $("#entry-record").textContent = JSON.stringify(j.record, null, 2);
      const img = $("#preview"); img.hidden = false; $("#no-preview").hidden = true;
      img.onerror = () => { img.hidden = true; $("#no-preview").hidden = false; };
      img.src = `/console/quarantine/${seq}/preview?t=${Date.now()}`;
    }
    async function act(fn) { try { await fn(); $("#entry").hidden = true; await load(); } catch (e) { alert(e.message); } }
    $("#q-retry").onclick = () => act(async () => { const j = await (await api(`/api/v1/quarantine/${current}/retry`, { method: "POST" })).json();
      alert(`retry: ${j.outcome}`); });
    $("#q-release").onclick = () => act(async () => {
      const why = prompt("Why is the unprocessed original released? (kept in the audit record)"); if (!why) throw new Error("not released");
      const blob = await (await api(`/api/v1/quarantine/${current}/release?reason=${encodeURIComponent(why)}`, { method: "POST" })).blob();
      const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = `quarantine-${current}`; a.click(); });
    $("#q-delete").onclick = () => act(async () => { if (!confirm(`Delete entry #${current}'s file? Its record stays.`)) throw new Error("kept");
      await api(`/api/v1/quarantine/${current}`, { method: "DELETE" }); });
    load();
  },

  audit() {
    $("#verify").onclick = async () => {
      const j = await (await api("/console/audit/verify")).json();
      $("#verify-result").textContent = j.ok ? `chain intact: ${j.records} records` : `BROKEN: ${j.problems.join("; ")}`;
      $("#verify-result").className = j.ok ? "ok" : "error";
    };
    async function lookup(file) {
      const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
      const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
      $("#digest").textContent = `${file.name}: sha256 ${hex}`;
      const rows = await (await api(`/console/audit/lookup?sha256=${hex}`)).json();
      const tb = $("#lookup tbody"); tb.textContent = "";
      for (const r of rows) { const t = tb.insertRow(); cell(t, r.seq); cell(t, r.recorded_at); cell(t, r.role); cell(t, r.handler);
        cell(t, r.outcome); cell(t, r.input); }
      if (!rows.length) cell(tb.insertRow(), "No record mentions this file.").colSpan = 6;
    }
    const dz = $("#dropzone");
    dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
    dz.addEventListener("dragleave", () => dz.classList.remove("over"));
    dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("over"); if (e.dataTransfer.files[0]) lookup(e.dataTransfer.files[0]); });
    $("#lookup-file").addEventListener("change", (e) => e.target.files[0] && lookup(e.target.files[0]));
  },
};
if (pages[page]) pages[page]();
