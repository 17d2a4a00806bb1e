// Click a header of a table.sortable to sort by that column (numbers numerically).
function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  const key = (row) => {
    const cell = row.cells[col];
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const num = parseFloat(raw);
    return raw !== "" && !isNaN(num) && /^-?[\d.]/.test(raw) ? num : raw;
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === y) return 0;
    if (x === "" || x === "-") return 1;
    if (y === "" || y === "-") return -1;
    return (x < y ? -1 : 1) * dir;
  });
  rows.forEach((r) => body.appendChild(r));
}
function makeSortable(table) {
  Array.from(table.tHead.rows[0].cells).forEach((th, col) => {
    th.addEventListener("click", () => {
      const dir = th.dataset.dir === "1" ? -1 : 1;
      Array.from(th.parentNode.cells).forEach((c) => { delete c.dataset.dir; c.classList.remove("asc", "desc"); });
      th.dataset.dir = String(dir);
      th.classList.add(dir === 1 ? "asc" : "desc");
      sortTable(table, col, dir);
    });
  });
}
document.querySelectorAll("table.sortable").forEach((t) => { if (t.tHead) makeSortable(t); });
