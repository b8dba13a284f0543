// Checks of what monitoring stacks read (issue 18, item 6): the PrometheusRule alerts, the
// Grafana dashboard and the autoscaler may name only metrics latentserve exports. The list of
// exported families is docs/operations.md's "Metrics and logs" section, which
// tests/integration/test_metrics.py holds against what each role serves.
import { readFileSync } from "node:fs";
import path from "node:path";

export function documentedMetrics(repoRoot) {
  const text = readFileSync(path.join(repoRoot, "docs", "operations.md"), "utf8");
  const start = text.indexOf("## Metrics and logs");
  const end = text.indexOf("\n## ", start + 1);
  const section = text.slice(start, end < 0 ? undefined : end);
  return new Set(section.match(/\b(latentserve|process)_[a-z0-9_]+/g) ?? []);
}

// Metric names a PromQL expression reads (histogram series reduced to their family).
export function metricsIn(expr) {
  const names = String(expr).match(/\b(latentserve|process)_[a-z0-9_]+/g) ?? [];
  return names.map((n) => n.replace(/_(bucket|count|sum)$/, ""));
}

function unknown(where, expr, known) {
  return metricsIn(expr).filter((m) => !known.has(m)).map((m) => `${where}: ${m} is not a documented latentserve metric`);
}

// Errors for the monitoring objects of one render.
export function monitoringErrors(objects, known) {
  const errors = [];
  for (const obj of objects) {
    const name = `${obj.kind}/${obj.metadata?.name}`;
    if (obj.kind === "PrometheusRule") {
      const rules = (obj.spec?.groups ?? []).flatMap((g) => g.rules ?? []);
      if (rules.length === 0) errors.push(`${name}: no rules`);
      for (const r of rules) {
        if (!r.alert && !r.record) errors.push(`${name}: a rule with neither alert nor record`);
        if (r.alert && !r.annotations?.summary) errors.push(`${name}: alert ${r.alert} has no summary annotation`);
        if (r.alert && !["warning", "critical", "info"].includes(r.labels?.severity)) {
          errors.push(`${name}: alert ${r.alert} needs labels.severity warning, critical or info`);
        }
        errors.push(...unknown(`${name} ${r.alert ?? r.record}`, r.expr, known));
      }
    }
    if (obj.kind === "HorizontalPodAutoscaler") {
      for (const m of obj.spec?.metrics ?? []) {
        const metric = m.external?.metric?.name ?? m.pods?.metric?.name ?? m.object?.metric?.name;
        if (metric) errors.push(...unknown(name, metric, known));
      }
    }
    if (obj.kind === "ConfigMap" && obj.metadata?.labels?.grafana_dashboard === "1") {
      for (const [file, json] of Object.entries(obj.data ?? {})) errors.push(...dashboardErrors(`${name} ${file}`, json, known));
    }
  }
  return errors;
}

export function dashboardErrors(where, json, known) {
  let dashboard;
  try {
    dashboard = JSON.parse(json);
  } catch (e) {
    return [`${where}: not JSON (${e.message})`];
  }
  const errors = [];
  if (!dashboard.title || !dashboard.uid) errors.push(`${where}: a dashboard needs a title and a uid`);
  const panels = dashboard.panels ?? [];
  if (panels.length === 0) errors.push(`${where}: no panels`);
  const ids = new Set();
  for (const p of panels) {
    if (ids.has(p.id)) errors.push(`${where}: panel id ${p.id} is used twice`);
    ids.add(p.id);
    if (!p.gridPos) errors.push(`${where}: panel "${p.title}" has no gridPos`);
    const targets = p.targets ?? [];
    if (targets.length === 0) errors.push(`${where}: panel "${p.title}" queries nothing`);
    for (const t of targets) {
      if (!t.expr) errors.push(`${where}: panel "${p.title}" has a target without expr`);
      errors.push(...unknown(`${where} panel "${p.title}"`, t.expr, known));
    }
  }
  return errors;
}
