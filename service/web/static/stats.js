// The live panel: GET /v1/stats every few seconds. Requests/s is the difference of two polls'
// inference request counts over the time between them; latency quantiles come from the server's
// histogram; fps, batch size and queue are the selected model's (reference fps from the seed
// table, or the model's own measured reference when the server exports one).

import { getStats } from "./api.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const GiB = 2 ** 30;

function fixed(value, digits = 1) {
  return value === null || value === undefined ? "-" : value.toFixed(digits);
}

function modelLine(entry, model) {
  const reference = entry?.reference_fps ?? model?.reference?.fps ?? null;
  const gpu = entry?.reference_gpu ?? model?.reference?.fps_gpu;
  const measured = `${fixed(entry?.measured_fps)} fps`;
  return reference === null ? `${measured} / no reference` : `${measured} / ${fixed(reference)} fps${gpu ? ` (${gpu})` : ""}`;
}

function gpuLine(gpus) {
  if (!gpus.length) return "no GPU";
  return gpus.map((g) => {
    const memory = g.memory_total_bytes ? `, ${fixed(g.memory_used_bytes / GiB)} / ${fixed(g.memory_total_bytes / GiB)} GiB` : "";
    return `GPU ${g.gpu}: ${fixed(100 * (g.utilization ?? 0), 0)} % busy${memory}`;
  }).join("; ");
}

function render(stats, previous, now, model) {
  const seconds = previous ? (now - previous.now) / 1000 : 0;
  $("live-rps").textContent = seconds > 0 ? fixed((stats.requests_total - previous.stats.requests_total) / seconds) : "measuring...";
  const ms = (s) => (s === null ? "-" : `${(1000 * s).toFixed(1)} ms`);
  $("live-latency").textContent = stats.latency_p50_s === null ? "no request yet" : `${ms(stats.latency_p50_s)} / ${ms(stats.latency_p99_s)}`;
  const entry = stats.models.find((m) => model && m.name === model.name && m.version === model.version) ?? stats.models[0];
  $("live-batch").textContent = fixed(entry?.batch_size_mean ?? null, 2);
  $("live-fps").textContent = modelLine(entry, model);
  $("live-queue").textContent = entry?.queue_depth === null || entry?.queue_depth === undefined ? "-" : `${entry.queue_depth} images`;
  $("live-gpu").textContent = gpuLine(stats.gpus);
}

export function startLivePanel(selectedModel) {
  let previous = null;
  const poll = async () => {
    if (!document.hidden) {
      try {
        const stats = await getStats();
        const now = performance.now();
        render(stats, previous, now, selectedModel());
        previous = { stats, now };
        $("live-note").textContent = "";
      } catch (error) {
        previous = null;
        $("live-note").textContent = `Live numbers unavailable: ${error.message}`;
      }
    }
    setTimeout(poll, POLL_MS);
  };
  poll();
}
