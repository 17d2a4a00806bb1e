// The study page: plots, trial table and per-layer view, from /api/study and /api/layers.
// Values from the storage are inserted with textContent only (never as HTML).
const ref = JSON.parse(document.getElementById("study-ref").textContent);
const query = (extra) => new URLSearchParams({ ...ref, ...extra }).toString();

function cell(row, text, sortValue) {
  const td = row.insertCell();
  td.textContent = text;
  if (sortValue !== undefined) td.dataset.sort = sortValue;
  return td;
}
const fmt = (v, d = 4) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));

async function showTrial(number) {
  const res = await fetch("/api/layers?" + query({ trial: number }));
  const table = document.getElementById("layers");
  table.replaceChildren();
  document.getElementById("export-trial").value = number;
  document.getElementById("trial-number").textContent = String(number);
  if (!res.ok) { document.getElementById("recipe").textContent = await res.text(); return; }
  const view = await res.json();
  await Plotly.react("heatmap", view.heatmap.data, view.heatmap.layout, { responsive: true });
  document.getElementById("heatmap").dataset.trial = String(number);
  const head = table.createTHead().insertRow();
  ["layer", "source", ...view.header].forEach((h) => { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); });
  const body = table.createTBody();
  view.rows.forEach((r) => {
    const row = body.insertRow();
    row.className = r.source === "merge" ? "merged" : "swapped";
    cell(row, String(r.layer));
    cell(row, r.label ?? (r.source === "merge" ? `merge (${view.method})` : `copy of ${r.source}`));
    r.values.forEach((v) => cell(row, v === null ? "-" : fmt(v, 3)));
  });
  document.getElementById("recipe").textContent = view.recipe;
}

function trialTable(data) {
  const table = document.getElementById("trials");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  ["trial", "state", ...data.objectives, "loss", "method", "merge s", "eval s", "note"].forEach((h) => {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  });
  const body = table.createTBody();
  data.trials.forEach((t) => {
    const row = body.insertRow();
    row.className = t.state.toLowerCase();
    const link = cell(row, String(t.number), t.number);
    link.classList.add("trial-link");
    link.addEventListener("click", () => showTrial(t.number));
    cell(row, t.state);
    data.objectives.forEach((_, i) => cell(row, t.values ? fmt(t.values[i]) : "-", t.values ? t.values[i] : ""));
    cell(row, fmt(t.loss), t.loss === null ? "" : t.loss);
    cell(row, t.method);
    cell(row, fmt(t.merge_s, 3), t.merge_s ?? "");
    cell(row, fmt(t.eval_s, 3), t.eval_s ?? "");
    cell(row, t.note || "");
  });
  makeSortable(table);
}

function archiveTable(rows) {
  if (!rows || !rows.length) return;
  document.getElementById("archive-panel").hidden = false;
  const table = document.getElementById("archive");
  table.replaceChildren();
  const keys = Object.keys(rows[0].descriptors);
  const head = table.createTHead().insertRow();
  ["cell", "trial", "weighted loss", ...keys.map((k) => "descriptor " + k)].forEach((h) => {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  });
  const body = table.createTBody();
  rows.forEach((r) => {
    const row = body.insertRow();
    cell(row, r.cell);
    const link = cell(row, String(r.trial), r.trial);
    link.classList.add("trial-link");
    link.addEventListener("click", () => showTrial(r.trial));
    cell(row, fmt(r.weighted_loss), r.weighted_loss);
    keys.forEach((k) => cell(row, fmt(r.descriptors[k], 3), r.descriptors[k]));
  });
  makeSortable(table);
}

async function load() {
  const data = await (await fetch("/api/study?" + query({}))).json();
  const front = document.getElementById("front");
  await Plotly.newPlot(front, data.front.data, data.front.layout, { responsive: true });
  front.on("plotly_click", (ev) => showTrial(ev.points[0].customdata));
  front.dataset.rendered = String(data.front.data.length);
  await Plotly.newPlot("history", [{ x: data.history.x, y: data.history.y, mode: "lines", line: { shape: "hv" } }],
    { margin: { t: 30 }, height: 420, xaxis: { title: { text: "evaluations" } }, yaxis: { title: { text: "best weighted loss" } } });
  trialTable(data);
  archiveTable(data.archive);
  if (data.front_trials.length) showTrial(data.front_trials[0]);
}
document.getElementById("show-trial").addEventListener("click", () => {
  const n = document.getElementById("export-trial").value;
  if (n !== "") showTrial(Number(n));
});
load();
