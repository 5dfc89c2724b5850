"""The bridge's status page: one self-contained HTML document, no external assets.

It draws nothing itself: its script fetches `/api/tasks` every second and builds the counts and
progress bars with `textContent` and `setAttribute`, so text from task files is never parsed as
HTML. The status line says what /healthz says: healthy, or its problems (a standby's reason, the
files held back by a full disk).
"""

from __future__ import annotations

API_PATH = "/api/tasks"
REFRESH_MS = 1000

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>taskd bridge</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  h2 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
  #status { color: #666; }
  #status.bad { color: #b00020; font-weight: 600; }
  table { border-collapse: collapse; }
  th, td { text-align: left; padding: .15rem .8rem .15rem 0; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  .task { display: grid; grid-template-columns: 12rem 5rem 6rem 6rem 1fr 3.5rem;
          gap: .5rem; align-items: center; padding: .15rem 0; }
  .task span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar { background: #e4e4e4; border-radius: 3px; height: .8rem; overflow: hidden; }
  .fill { background: #2e7d32; height: 100%; width: 0; transition: width .4s; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  #empty { color: #666; }
</style>
</head>
<body>
<h1>taskd bridge</h1>
<div id="status">loading&hellip;</div>
<h2>Tasks by state</h2>
<table><thead><tr><th>state</th><th>tasks</th></tr></thead><tbody id="counts"></tbody></table>
<h2>Running tasks</h2>
<div id="tasks"></div>
<div id="empty" hidden>no task is active</div>
<script>
"use strict";
const API = "__API__";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function countRow(state, n, note) {
  const tr = el("tr");
  tr.setAttribute("data-state", state);
  tr.append(el("td", "", note ? state + " (" + note + ")" : state), el("td", "n", n));
  return tr;
}

function taskRow(task) {
  const pct = Math.max(0, Math.min(100, Number(task.progress) || 0));
  const row = el("div", "task");
  row.setAttribute("data-task-id", task.task_id);
  row.setAttribute("data-user-id", task.user_id);
  row.setAttribute("data-percent", String(pct));
  const bar = el("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(pct));
  const fill = el("div", "fill");
  fill.style.width = pct + "%";
  bar.append(fill);
  row.append(el("span", "id", task.task_id), el("span", "user", task.user_id),
             el("span", "type", task.type), el("span", "state", task.state), bar,
             el("span", "pct", pct + "%"), el("span", "doing", task.doing || ""));
  return row;
}

function render(data) {
  const counts = [];
  for (const [state, n] of Object.entries(data.active)) counts.push(countRow(state, n));
  for (const [state, n] of Object.entries(data.ended)) {
    counts.push(countRow(state, n, "since the bridge started"));
  }
  document.getElementById("counts").replaceChildren(...counts);
  document.getElementById("tasks").replaceChildren(...data.tasks.map(taskRow));
  document.getElementById("empty").hidden = data.tasks.length > 0;
  const status = document.getElementById("status");
  const problems = data.health.problems || [];
  status.className = problems.length ? "bad" : "";
  status.setAttribute("data-status", String(data.health.status));
  status.textContent = (problems.length ? problems.join(", ") : "healthy") +
    (data.more ? "; " + data.more + " more tasks not shown" : "") +
    "; updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const answer = await fetch(API, {cache: "no-store"});
    render(await answer.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.className = "bad";
    status.textContent = "cannot reach the bridge: " + err;
  }
}

refresh();
setInterval(refresh, __REFRESH__);
</script>
</body>
</html>
""".replace("__API__", API_PATH).replace("__REFRESH__", str(REFRESH_MS))
