// Hand-written SVG charts: a line chart for training loss, a heat map for the confusion matrix.

import { h, svg, integer, percent } from "./dom.js";

const MARGIN = { top: 14, right: 16, bottom: 40, left: 52 };

export function niceTicks(min, max, count = 5) {
  const span = max - min || Math.abs(max) || 1;
  let step = 10 ** Math.floor(Math.log10(span / count));
  const error = span / count / step;
  if (error >= 7.5) step *= 10;
  else if (error >= 3.5) step *= 5;
  else if (error >= 1.5) step *= 2;
  const ticks = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) {
    ticks.push(Number(value.toPrecision(12)));
  }
  return ticks;
}

function label(value) {
  return Math.abs(value) >= 1000 ? integer(value) : String(Number(value.toPrecision(4)));
}

// series: [{name, points: [[x, y]], kind: "line" | "dots", className}]
// `width` is the pixel width it will be drawn at, so that its text keeps its size on any screen.
export function lineChart({ series, xMax, xLabel, yLabel, title, width = 640 }) {
  const WIDTH = Math.max(260, Math.round(width));
  const HEIGHT = Math.round(Math.min(280, Math.max(190, WIDTH * 0.42)));
  const all = series.flatMap((s) => s.points);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const x1 = Math.max(xMax ?? 0, ...xs, 1);
  // The y range hugs the data (a flat-looking curve says nothing), padded and on round ticks.
  const low = Math.min(...ys);
  const high = Math.max(...ys);
  const pad = (high - low) * 0.12 || Math.abs(high) * 0.1 || 1;
  const yTicks = niceTicks(Math.max(0, low - pad), high + pad, 4);
  const step = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 1;
  while (yTicks[0] > Math.max(0, low - pad)) yTicks.unshift(Number((yTicks[0] - step).toPrecision(12)));
  while (yTicks.at(-1) < high + pad) yTicks.push(Number((yTicks.at(-1) + step).toPrecision(12)));
  const bottom = yTicks[0];
  const top = yTicks.at(-1);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + (x / x1) * plotW;
  const sy = (y) => MARGIN.top + plotH - ((y - bottom) / (top - bottom || 1)) * plotH;

  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  chart.append(svg("title", {}, title));
  for (const tick of yTicks) {
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(tick), y2: sy(tick), class: "grid" }),
      svg("text", { x: MARGIN.left - 8, y: sy(tick) + 4, class: "tick", "text-anchor": "end" }, label(tick)),
    );
  }
  for (const tick of niceTicks(0, x1, WIDTH < 420 ? 4 : 6).filter((t) => Number.isInteger(t) || x1 < 6)) {
    chart.append(
      svg("line", { x1: sx(tick), x2: sx(tick), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4, class: "axis" }),
      svg("text", { x: sx(tick), y: MARGIN.top + plotH + 18, class: "tick", "text-anchor": "middle" }, label(tick)),
    );
  }
  chart.append(
    svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "axis" }),
    svg("text", { x: MARGIN.left + plotW / 2, y: HEIGHT - 6, class: "axis-label", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 14, y: MARGIN.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
      transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})` }, yLabel),
  );
  for (const s of series) {
    if (!s.points.length) continue;
    if (s.kind === "dots") {
      const group = svg("g", { class: s.className, "data-points": s.points.length });
      for (const [x, y] of s.points) group.append(svg("circle", { cx: sx(x), cy: sy(y), r: 4 }, svg("title", {}, `${s.name}: ${label(y)} at step ${label(x)}`)));
      chart.append(group);
    } else {
      const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      chart.append(svg("path", { d, class: s.className, "data-points": s.points.length }));
      const [lx, ly] = s.points.at(-1);
      chart.append(svg("circle", { cx: sx(lx), cy: sy(ly), r: 3, class: `${s.className} end` }));
    }
  }
  return chart;
}

export function legend(items) {
  return h("ul", { class: "legend" }, items.map(([name, className]) => h("li", {}, h("span", { class: `swatch ${className}`, "aria-hidden": "true" }), name)));
}

// Rows are true labels, columns predicted ones; shading is the share of the row.
export function confusionMatrix(matrix, labels) {
  const table = h("table", { class: "confusion" },
    h("caption", {}, "Confusion matrix: rows are true classes, columns predicted ones; shading is the share of each true class."),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "corner" }, h("span", {}, "true ↓ / predicted →")),
      labels.map((name) => h("th", { scope: "col" }, name)))),
  );
  const body = h("tbody");
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    body.append(h("tr", {},
      h("th", { scope: "row" }, labels[i]),
      row.map((count, j) => {
        const share = total ? count / total : 0;
        const cell = h("td", {
          class: `${i === j ? "hit" : "miss"}${share > 0.55 ? " dark" : ""}`,
          style: { "--share": share.toFixed(3) },
          title: `${labels[i]} predicted as ${labels[j]}: ${count} of ${total} (${percent(share)})`,
        }, h("span", { class: "n" }, integer(count)), h("span", { class: "share" }, percent(share, 0)));
        return cell;
      }),
    ));
  });
  table.append(body);
  return table;
}
