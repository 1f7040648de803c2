// Calls from the page to the service: relative URLs (the page works behind a path prefix), the API
// key typed into the page (kept in this tab's sessionStorage, sent as a Bearer token), and the
// service's JSON errors turned into ApiError messages a person can act on.

const KEY = "deeplab-api-key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY, key) : sessionStorage.removeItem(KEY)),
};

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(status === 401
      ? `The server needs a valid API key: enter it under "API key" above (HTTP 401: ${detail})`
      : `${detail} (HTTP ${status} ${code})`);
    Object.assign(this, { status, code, detail });
  }
}

async function call(path, init = {}) {
  const headers = new Headers(init.headers);
  const key = apiKey.get();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), { ...init, headers });
  } catch (error) {
    throw new ApiError(0, "network_error", `the server could not be reached: ${error.message}`);
  }
  if (!response.ok) {
    let code = "error";
    let detail = response.statusText;
    try {
      ({ error: code = code, detail = detail } = await response.json());
    } catch {
      // not the service's JSON (a proxy's page, say): status and reason phrase are all there is
    }
    throw new ApiError(response.status, code, detail);
  }
  return response;
}

export async function getModels() {
  return (await call("v1/models")).json();
}

export async function getStats() {
  return (await call("v1/stats")).json();
}

// One image, answered as raw labels (height x width class ids: no PNG to encode or decode; the
// page colours them and counts them itself) with the timing and batch headers.
export async function segment(file, model) {
  const params = new URLSearchParams({ format: "raw" });
  if (model) {
    params.set("model", model.name);
    params.set("version", model.version);
  }
  const body = new FormData();
  body.append("image", file, file.name);
  const response = await call(`segment?${params}`, { method: "POST", body });
  const header = (name) => response.headers.get(name);
  return {
    labels: new Uint8Array(await response.arrayBuffer()),
    width: Number(header("X-Width")),
    height: Number(header("X-Height")),
    model: header("X-Model"),
    batchSize: Number(header("X-Batch-Size")),
    totalMs: Number(header("X-Total-Ms")),
    queueMs: Number(header("X-Queue-Ms")),
    inferenceMs: Number(header("X-Inference-Ms")),
  };
}
