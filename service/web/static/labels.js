// What the page computes from a label map (one class id per pixel, row-major): its colours, the
// pixel count of every class, and the palette PNG the service itself would send (format=png), so
// one format=raw request gives everything the page shows and downloads.

export function colourMask(labels, width, height, palette) {
  const lut = new Uint8ClampedArray(256 * 4); // classes beyond the palette stay black, as the service draws them
  palette.slice(0, 256).forEach(([r, g, b], i) => lut.set([r, g, b, 255], i * 4));
  for (let i = palette.length; i < 256; i++) lut[i * 4 + 3] = 255;
  const image = new ImageData(width, height);
  const out = image.data;
  for (let i = 0; i < labels.length; i++) {
    const c = labels[i] * 4;
    out[i * 4] = lut[c];
    out[i * 4 + 1] = lut[c + 1];
    out[i * 4 + 2] = lut[c + 2];
    out[i * 4 + 3] = lut[c + 3];
  }
  return image;
}

// Pixels per class id (all 256 possible values; the legend shows the model's classes).
export function classCounts(labels) {
  const counts = new Float64Array(256);
  for (let i = 0; i < labels.length; i++) counts[labels[i]]++;
  return counts;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate")); // RFC 1950, as PNG wants
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// An 8-bit palette PNG, pixel value = class id, as the service's format=png: every row with PNG's
// "Up" filter (label maps' rows mostly repeat), deflated by the browser's CompressionStream.
export async function palettePng(labels, width, height, palette) {
  const rows = new Uint8Array(height * (width + 1));
  for (let y = 0; y < height; y++) {
    const row = y * (width + 1);
    rows[row] = 2; // "Up": the difference to the row above (zeros above the first row), modulo 256
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      rows[row + 1 + x] = labels[i] - (y ? labels[i - width] : 0);
    }
  }
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 3, 0, 0, 0], 8); // 8 bits, palette colour, deflate, adaptive filters, no interlace
  const plte = Uint8Array.from(palette.slice(0, 256).flat());
  const signature = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);
  const parts = [signature, chunk("IHDR", header), chunk("PLTE", plte), chunk("IDAT", await zlib(rows)), chunk("IEND", new Uint8Array())];
  return new Blob(parts, { type: "image/png" });
}
