/** Small DOM helpers: every value from the cluster goes in as text, never as HTML. */

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** A table with a header row; `rows` are arrays of cells (text or elements). */
export function table(
  headers: string[],
  rows: {
    cells: (string | HTMLElement)[];
    className: string;
    data?: Record<string, string>;
    title?: string;
  }[],
  empty: string
): HTMLElement {
  if (rows.length === 0) {
    return el('div', 'orrery-empty', empty);
  }
  const t = el('table', 'orrery-table');
  const head = el('tr');
  for (const h of headers) {
    head.appendChild(el('th', '', h));
  }
  t.appendChild(el('thead')).appendChild(head);
  const body = t.appendChild(el('tbody'));
  for (const row of rows) {
    const tr = body.appendChild(el('tr', row.className));
    if (row.title) {
      tr.title = row.title;
    }
    for (const [k, v] of Object.entries(row.data ?? {})) {
      tr.dataset[k] = v;
    }
    for (const cell of row.cells) {
      const td = tr.appendChild(el('td'));
      if (typeof cell === 'string') {
        td.textContent = cell;
      } else {
        td.appendChild(cell);
      }
    }
  }
  return t;
}

export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : '';
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) {
    return '';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** "CPU 2, GPU 1, store 64.0 MiB, custom 3": what fits a sidebar (node memory goes in the tooltip). */
export function formatResources(r: Record<string, number> | undefined): string {
  return Object.entries(r ?? {})
    .filter(([k]) => !k.startsWith('node:') && k !== 'memory')
    .map(([k, v]) => (k === 'object_store_memory' ? `store ${formatBytes(v)}` : `${k} ${v}`))
    .join(', ');
}
