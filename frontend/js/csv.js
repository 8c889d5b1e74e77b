// RFC 4180 CSV: reading texts out of a file, writing results back.

export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  let i = 0;
  if (text.charCodeAt(0) === 0xfeff) i = 1;
  for (; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 1;
        } else quoted = false;
      } else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows.filter((r) => r.some((cell) => cell.trim() !== ""));
}

const oneLine = (text) => text.replace(/\s+/g, " ").trim();

// The texts of a CSV: its `text` column, else title and description joined, else its first
// column that is not all numbers. Returns {texts, source} where source says which was used.
export function textsFromCsv(content) {
  const rows = parseCsv(content);
  if (!rows.length) return { texts: [], source: "an empty file" };
  const header = rows[0].map((name) => name.trim().toLowerCase());
  const body = rows.slice(1);
  const textColumn = header.indexOf("text");
  if (textColumn >= 0) return { texts: column(body, textColumn), source: 'column "text"' };
  const title = header.indexOf("title");
  const description = header.indexOf("description");
  if (title >= 0 && description >= 0) {
    const texts = body.map((r) => joinTitle(r[title] ?? "", r[description] ?? "")).filter(Boolean);
    return { texts, source: 'columns "title" and "description"' };
  }
  if (title >= 0) return { texts: column(body, title), source: 'column "title"' };
  const width = Math.max(...rows.map((r) => r.length));
  for (let index = 0; index < width; index += 1) {
    const values = rows.map((r) => (r[index] ?? "").trim()).filter(Boolean);
    if (values.length && !values.every((v) => /^-?\d+(\.\d+)?$/.test(v))) {
      return { texts: column(rows, index), source: index === 0 ? "the first column" : `column ${index + 1}` };
    }
  }
  return { texts: [], source: "no column with text" };
}

function column(rows, index) {
  return rows.map((r) => oneLine(r[index] ?? "")).filter(Boolean);
}

// As the pipeline joins them: "Title. Description", without doubling a full stop.
function joinTitle(title, description) {
  const t = oneLine(title);
  const d = oneLine(description);
  if (!t || !d) return t || d;
  return /[.!?\u2026:;]["')\]\u201d\u2019]*$/.test(t) ? `${t} ${d}` : `${t}. ${d}`;
}

export function textsFromPlain(content) {
  return content.split(/\r?\n/).map(oneLine).filter(Boolean);
}

function cell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(rows) {
  return rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}
