import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { KernelFocus } from './focus';
import { requestAPI } from './request';
import {
  IActor,
  IConnected,
  INode,
  IObject,
  IPlacementGroup,
  ISnapshot,
  ITask
} from './tokens';

/** How often the sidebar refreshes while it is visible (ms). */
export const REFRESH_INTERVAL = 1500;

type Answer<K extends string, T> = IConnected & { [key in K]?: T[] };

/**
 * The sidebar's data: polls the server's REST endpoints while `active()` says the
 * panel is visible, and emits `changed` with each snapshot.
 */
export class OrreryModel {
  constructor(options: OrreryModel.IOptions) {
    this._active = options.active;
    this._focus = options.focus ?? null;
    // Another notebook in focus: show its cluster now, not at the next tick.
    this._focus?.changed.connect(() => void this._poll.refresh(), this);
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: REFRESH_INTERVAL, backoff: true, max: 30 * 1000 },
      // Not polling at all while hidden: the server asks the cluster on every call.
      standby: () => (this._active() ? 'when-hidden' : true),
      name: 'orrery:sidebar'
    });
  }

  get changed(): ISignal<this, ISnapshot> {
    return this._changed;
  }

  get snapshot(): ISnapshot | null {
    return this._snapshot;
  }

  /** The cell id the task list is filtered by ('' for all cells). */
  get cellFilter(): string {
    return this._cellFilter;
  }
  set cellFilter(value: string) {
    this._cellFilter = value.trim();
    void this._poll.refresh();
  }

  /** Refresh now (e.g. when the panel is shown, or after a cancel). */
  refreshSoon(): void {
    void this._poll.refresh();
  }

  async refresh(): Promise<void> {
    try {
      await this._refresh();
    } catch (error) {
      // Shown in the panel; rethrown so the poll backs off.
      this._snapshot = {
        ...OrreryModel.EMPTY,
        reason:
          `The Jupyter server did not answer /orrery/api (${(error as Error).message}). ` +
          'Is the kernel_ext.lab server extension enabled? See `jupyter server extension list`.'
      };
      this._changed.emit(this._snapshot);
      throw error;
    }
  }

  private async _refresh(): Promise<void> {
    const tasksPath = this._cellFilter
      ? `tasks?cell=${encodeURIComponent(this._cellFilter)}`
      : 'tasks';
    const ask = (path: string) => (this._focus ? this._focus.withKernel(path) : path);
    const [nodes, tasks, actors, pgs, objects] = await Promise.all([
      requestAPI<Answer<'nodes', INode>>(ask('nodes')),
      requestAPI<Answer<'tasks', ITask>>(ask(tasksPath)),
      requestAPI<Answer<'actors', IActor>>(ask('actors')),
      requestAPI<Answer<'placement_groups', IPlacementGroup>>(ask('placement_groups')),
      requestAPI<Answer<'objects', IObject>>(ask('objects'))
    ]);
    const answers: IConnected[] = [nodes, tasks, actors, pgs, objects];
    const missing = answers.find(a => !a.connected);
    this._snapshot = {
      connected: !missing,
      reason: missing?.reason ?? '',
      address: nodes.address ?? '',
      kernel: nodes.kernel ?? null,
      nodes: nodes.nodes ?? [],
      tasks: tasks.tasks ?? [],
      actors: actors.actors ?? [],
      placementGroups: pgs.placement_groups ?? [],
      objects: objects.objects ?? []
    };
    this._changed.emit(this._snapshot);
  }

  /** Cancel through the server (works while the kernel is busy). */
  async cancelTask(taskId: string, force = false): Promise<void> {
    await requestAPI<IConnected>(`tasks/${taskId}/cancel`, {
      method: 'POST',
      body: JSON.stringify({ force })
    });
    this.refreshSoon();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private _active: () => boolean;
  private _focus: KernelFocus | null;
  private _poll: Poll;
  private _cellFilter = '';
  private _snapshot: ISnapshot | null = null;
  private _changed = new Signal<this, ISnapshot>(this);
}

export namespace OrreryModel {
  export const EMPTY: ISnapshot = {
    connected: false,
    reason: '',
    address: '',
    kernel: null,
    nodes: [],
    tasks: [],
    actors: [],
    placementGroups: [],
    objects: []
  };

  export interface IOptions {
    /** Whether the panel is visible; polling pauses while it is not. */
    active: () => boolean;
    /** The notebook in focus, whose kernel's cluster is shown (none: the server's default). */
    focus?: KernelFocus | null;
  }
}
