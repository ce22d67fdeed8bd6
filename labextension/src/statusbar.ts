import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { formatBytes } from './dom';
import { KernelFocus } from './focus';
import { requestAPI } from './request';
import { IMetrics } from './tokens';

/** How often the status bar asks the server for metrics (ms). */
export const METRICS_INTERVAL = 2000;

/** "Orrery CPU 1/2 · store 1.0 MiB/64.0 MiB": polls /orrery/api/metrics, never the kernel. */
export class OrreryStatus extends Widget {
  constructor(focus: KernelFocus | null = null) {
    super();
    this._focus = focus;
    this._focus?.changed.connect(() => void this._poll.refresh(), this);
    this.addClass('orrery-StatusItem');
    this.node.textContent = 'Orrery: …';
    this.node.title = 'Orrery cluster: CPU in use and object-store use';
    this._poll = new Poll({
      factory: () => this._refresh(),
      frequency: { interval: METRICS_INTERVAL, backoff: true, max: 60 * 1000 },
      standby: 'when-hidden',
      name: 'orrery:metrics'
    });
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  private async _refresh(): Promise<void> {
    let m: IMetrics;
    try {
      m = await requestAPI<IMetrics>(this._focus ? this._focus.withKernel('metrics') : 'metrics');
    } catch (error) {
      this.node.textContent = 'Orrery: server extension not answering';
      this.node.title = (error as Error).message;
      throw error; // the poll backs off
    }
    if (!m.connected || !m.cpu || !m.object_store) {
      this.node.textContent = 'Orrery: no cluster';
      this.node.title = m.reason ?? '';
      return;
    }
    const store = m.object_store;
    this.node.textContent =
      `Orrery CPU ${m.cpu.used}/${m.cpu.total} · ` +
      `store ${formatBytes(store.used_bytes)}/${formatBytes(store.capacity_bytes)}`;
    this.node.title = `Cluster ${m.address}: ${m.nodes} node(s), ${store.num_objects} object(s) in the store`;
  }

  private _poll: Poll;
  private _focus: KernelFocus | null;
}
