import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { el, formatBytes, formatResources, shortId, table } from './dom';
import { KernelFocus } from './focus';
import { OrreryModel } from './model';
import { ICell, INode, ISnapshot, ITask } from './tokens';

/** The sidebar's id: the command and the tests find the panel by it. */
export const PANEL_ID = 'orrery-sidebar';

/** States for which a task gets a Cancel button. */
const CANCELLABLE = new Set(['PENDING', 'RUNNING']);
/** Tasks listed one by one (the rest are counted by function): what runs, and what went wrong. */
const LISTED = new Set(['PENDING', 'RUNNING', 'FAILED', 'CANCELLED']);
const STATE_ORDER = ['FINISHED', 'RUNNING', 'PENDING', 'FAILED', 'CANCELLED'];
/** The task stream shows this many seconds back from now. */
const STREAM_WINDOW_S = 120;
const SVG_NS = 'http://www.w3.org/2000/svg';

/** What ran on which worker over the last STREAM_WINDOW_S seconds, as dask's task stream. */
function taskStream(tasks: ITask[], now: number): Element {
  const start = now - STREAM_WINDOW_S;
  const spans = tasks.filter(t => t.start_time && t.worker_id && (t.end_time ?? now) >= start);
  if (spans.length === 0) {
    return el('div', 'orrery-empty', `Nothing ran in the last ${STREAM_WINDOW_S / 60} minutes.`);
  }
  const workers = [...new Set(spans.map(t => t.worker_id as string))];
  const rowHeight = 10;
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'orrery-stream');
  svg.setAttribute('viewBox', `0 0 ${STREAM_WINDOW_S} ${workers.length * rowHeight}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.style.height = `${workers.length * rowHeight + 2}px`;
  for (const t of spans) {
    const from = Math.max(t.start_time as number, start) - start;
    const to = (t.end_time ?? now) - start;
    const rect = document.createElementNS(SVG_NS, 'rect');
    rect.setAttribute('x', String(from));
    rect.setAttribute('y', String(workers.indexOf(t.worker_id as string) * rowHeight + 1));
    rect.setAttribute('width', String(Math.max(to - from, 0.3)));
    rect.setAttribute('height', String(rowHeight - 2));
    rect.setAttribute('class', `orrery-stream-${t.state.toLowerCase()}`);
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent = `${t.name} (${t.state}) on worker ${shortId(t.worker_id)}: ${((to - from) * 1000).toFixed(0)} ms`;
    rect.appendChild(title);
    svg.appendChild(rect);
  }
  return svg;
}

/** A labelled bar: `used` of `total`. */
function bar(label: string, used: number, total: number, text: string): HTMLElement {
  const box = el('div', 'orrery-bar');
  box.title = `${label}: ${text}`;
  box.appendChild(el('span', 'orrery-bar-label', `${label} ${text}`));
  const fill = box.appendChild(el('div', 'orrery-bar-track')).appendChild(el('div', 'orrery-bar-fill'));
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  fill.style.width = `${pct.toFixed(1)}%`;
  if (pct > 85) {
    fill.classList.add('orrery-mod-high');
  }
  return box;
}

/** One stacked bar of a function's tasks by state, as dask-labextension's progress. */
function progress(counts: Record<string, number>): HTMLElement {
  const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  const box = el('div', 'orrery-progress');
  for (const state of STATE_ORDER) {
    if (counts[state]) {
      const part = box.appendChild(el('span', `orrery-progress-${state.toLowerCase()}`));
      part.style.width = `${(100 * counts[state]) / total}%`;
      part.title = `${state} ${counts[state]}`;
    }
  }
  return box;
}

export const orreryIcon = new LabIcon({
  name: 'orrery:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<circle cx="12" cy="12" r="3"/><circle cx="20" cy="12" r="1.6"/><circle cx="6" cy="6" r="1.6"/>' +
    '<path fill="none" stroke="#616161" stroke-width="1.2" d="M12 4a8 8 0 1 1 0 16a8 8 0 1 1 0-16"/></g></svg>'
});

/** "analysis.ipynb In[13]": which notebook, then the cell as the notebook shows it. */
function cellLabel(cell: ICell | null): string {
  if (!cell) {
    return '';
  }
  const inCell =
    cell.execution_count !== null && cell.execution_count !== undefined
      ? `In[${cell.execution_count}]`
      : cell.cell_id;
  const notebook = cell.notebook ? cell.notebook.split('/').pop() : '';
  return notebook ? `${notebook} ${inCell}` : inCell;
}

function taskTitle(t: ITask): string {
  const parts = [`task ${t.task_id}`, t.type];
  if (t.node_id) {
    parts.push(`node ${shortId(t.node_id)}`);
  }
  if (t.cell) {
    parts.push(`cell ${t.cell.cell_id}${t.cell.notebook ? ' of ' + t.cell.notebook : ''}`);
  }
  if (t.error_type) {
    parts.push(`${t.error_type}: ${t.error_message ?? ''}`);
  }
  return parts.join('\n');
}

/**
 * The "Orrery" sidebar: nodes, tasks (with a cell filter and Cancel buttons), actors,
 * placement groups and objects of the cluster the Jupyter server is connected to.
 */
export class OrreryPanel extends Widget {
  constructor(focus: KernelFocus | null = null) {
    super();
    this.id = PANEL_ID;
    this.addClass('orrery-Panel');
    this.title.icon = orreryIcon;
    this.title.caption = 'Orrery';
    this.model = new OrreryModel({ active: () => this.isVisible, focus });

    this._status = this.node.appendChild(el('div', 'orrery-status', 'Connecting…'));
    const open = this.node.appendChild(el('button', 'orrery-open-dashboard jp-mod-styled', 'Open the full dashboard'));
    open.title = 'The cluster\'s web UI (jobs and their logs, timeline, objects, metrics) in a tab';
    open.addEventListener('click', () => this.openDashboard?.());
    this._error = this.node.appendChild(el('div', 'orrery-error'));
    this._sections = {
      nodes: this._section('Nodes'),
      tasks: this._section('Tasks', this._filterBox()),
      stream: this._section('Task stream (last 2 minutes, a row per worker)'),
      actors: this._section('Actors'),
      placementGroups: this._section('Placement groups'),
      objects: this._section('Objects')
    };
    this.model.changed.connect((_, snap) => this._render(snap));
    // One listener for every Cancel button: rows are rebuilt on each refresh.
    this.node.addEventListener('click', event => this._onClick(event));
  }

  readonly model: OrreryModel;
  /** Set by the plugin: opens the web UI in a main-area tab. */
  openDashboard: (() => void) | null = null;

  dispose(): void {
    this.model.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    this.model.refreshSoon();
  }

  private _section(title: string, extra?: HTMLElement): HTMLElement {
    const section = this.node.appendChild(el('section', 'orrery-section'));
    section.appendChild(el('h3', '', title));
    if (extra) {
      section.appendChild(extra);
    }
    return section.appendChild(el('div', 'orrery-section-body'));
  }

  private _filterBox(): HTMLElement {
    const input = el('input', 'orrery-cell-filter jp-mod-styled');
    input.type = 'search';
    input.placeholder = 'Filter by cell: In[13] or a cell id';
    input.addEventListener('input', () => (this.model.cellFilter = input.value));
    return input;
  }

  private async _onClick(event: MouseEvent): Promise<void> {
    const button = (event.target as HTMLElement).closest('button.orrery-cancel');
    if (!(button instanceof HTMLButtonElement)) {
      return;
    }
    const taskId = button.dataset.taskId ?? '';
    button.disabled = true;
    button.textContent = 'Cancelling…';
    this._error.textContent = '';
    try {
      await this.model.cancelTask(taskId);
    } catch (error) {
      this._error.textContent = `Could not cancel task ${shortId(taskId)}: ${(error as Error).message}`;
      button.disabled = false;
      button.textContent = 'Cancel';
    }
  }

  private _render(snap: ISnapshot): void {
    const whose = snap.kernel?.followed
      ? `this notebook's cluster${snap.kernel.notebook ? ' (' + snap.kernel.notebook.split('/').pop() + ')' : ''}`
      : `the server's default cluster (${snap.address || 'auto'}; this notebook's kernel has none yet)`;
    this._status.textContent = snap.connected
      ? `Showing ${snap.kernel ? whose : 'cluster ' + snap.address}: ${snap.nodes.length} node(s)`
      : `Not connected: ${snap.reason}`;
    this._status.dataset.clusterAddress = snap.kernel?.cluster_address ?? '';
    this._status.dataset.kernelId = snap.kernel?.id ?? '';
    this.toggleClass('orrery-mod-disconnected', !snap.connected);
    const s = this._sections;
    s.nodes.replaceChildren(
      table(
        ['Node', 'State', 'Use'],
        snap.nodes.map(n => ({
          className: 'orrery-node-row',
          data: { nodeId: n.node_id },
          title: `${n.node_id} on ${n.hostname} (${n.node_ip}): ${formatResources(n.resources_total)}`,
          cells: [`${shortId(n.node_id)}${n.is_head_node ? ' (head)' : ''}`, n.state, this._nodeBars(n)]
        })),
        'No nodes.'
      )
    );
    // Counts by function for every task; rows only for those running, waiting or gone wrong,
    // unless a cell filter asks for all of one cell's.
    const byFunction = new Map<string, Record<string, number>>();
    for (const t of snap.tasks) {
      const counts = byFunction.get(t.name) ?? {};
      counts[t.state] = (counts[t.state] ?? 0) + 1;
      byFunction.set(t.name, counts);
    }
    const listed = this.model.cellFilter ? snap.tasks : snap.tasks.filter(t => LISTED.has(t.state));
    s.tasks.replaceChildren(
      table(
        ['Function', 'Progress', 'States'],
        [...byFunction.entries()].map(([name, counts]) => ({
          className: 'orrery-function-row',
          data: { function: name },
          cells: [
            name,
            progress(counts),
            STATE_ORDER.filter(st => counts[st]).map(st => `${st.toLowerCase()} ${counts[st]}`).join(', ')
          ]
        })),
        this.model.cellFilter ? `No tasks of cell ${this.model.cellFilter}.` : 'No tasks.'
      ),
      table(
        ['Task', 'State', ''],
        listed.map(t => ({
          className: `orrery-task-row orrery-state-${t.state.toLowerCase()}`,
          data: { taskId: t.task_id, state: t.state },
          title: taskTitle(t),
          cells: [this._taskName(t), t.state, this._cancelButton(t.task_id, t.state)]
        })),
        ''
      )
    );
    s.stream.replaceChildren(taskStream(snap.tasks, Date.now() / 1000));
    s.actors.replaceChildren(
      table(
        ['Actor', 'State', 'Name', 'Restarts', 'Cell'],
        snap.actors.map(a => ({
          className: 'orrery-actor-row',
          data: { actorId: a.actor_id },
          cells: [a.class_name, a.state, a.name ?? '', String(a.num_restarts ?? 0), cellLabel(a.cell)]
        })),
        'No actors.'
      )
    );
    s.placementGroups.replaceChildren(
      table(
        ['Placement group', 'Strategy', 'State'],
        snap.placementGroups.map(p => ({
          className: 'orrery-pg-row',
          cells: [p.name || shortId(p.placement_group_id), p.strategy ?? '', p.state ?? '']
        })),
        'No placement groups.'
      )
    );
    s.objects.replaceChildren(
      table(
        ['Object', 'Size', 'Where', 'Cell'],
        snap.objects.map(o => ({
          className: 'orrery-object-row',
          data: { objectId: o.object_id },
          cells: [shortId(o.object_id), formatBytes(o.size_bytes), o.spilled ? 'spilled' : 'memory', cellLabel(o.cell)]
        })),
        'No objects.'
      )
    );
  }

  private _nodeBars(n: INode): HTMLElement {
    const box = el('div', 'orrery-node-bars');
    const total = n.resources_total ?? {};
    const free = n.resources_available ?? total;
    if (total.CPU !== undefined) {
      const used = total.CPU - (free.CPU ?? 0);
      box.appendChild(bar('CPU', used, total.CPU, `${used}/${total.CPU}`));
    }
    if (total.GPU !== undefined) {
      const used = total.GPU - (free.GPU ?? 0);
      box.appendChild(bar('GPU', used, total.GPU, `${used}/${total.GPU}`));
    }
    const store = n.object_store;
    if (store) {
      box.appendChild(
        bar('store', store.used_bytes, store.capacity_bytes, `${formatBytes(store.used_bytes)}/${formatBytes(store.capacity_bytes)}`)
      );
    }
    if (n.memory_total_bytes) {
      const used = n.memory_used_bytes ?? 0;
      box.appendChild(bar('memory', used, n.memory_total_bytes, `${formatBytes(used)}/${formatBytes(n.memory_total_bytes)}`));
    }
    return box;
  }

  private _taskName(t: ITask): HTMLElement {
    const name = el('span', 'orrery-task-name', t.name);
    const cell = cellLabel(t.cell);
    if (cell) {
      name.appendChild(el('span', 'orrery-cell-label', ` ${cell}`));
    }
    return name;
  }

  private _cancelButton(taskId: string, state: string): string | HTMLElement {
    if (!CANCELLABLE.has(state)) {
      return '';
    }
    const button = el('button', 'orrery-cancel', 'Cancel');
    button.dataset.taskId = taskId;
    button.title = 'Cancel this task (through the Jupyter server, so it works while the kernel is busy)';
    return button;
  }

  private _status: HTMLElement;
  private _error: HTMLElement;
  private _sections: Record<'nodes' | 'tasks' | 'stream' | 'actors' | 'placementGroups' | 'objects', HTMLElement>;
}
