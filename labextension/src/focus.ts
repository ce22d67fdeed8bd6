import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

/** What the shell's current widget has when it is a notebook or a console (duck-typed, so
 * the extension needs no dependency on @jupyterlab/notebook). */
interface ISessionWidget extends Widget {
  sessionContext?: {
    session?: { kernel?: { id: string } | null } | null;
    kernelChanged?: ISignal<unknown, unknown>;
  };
}

/**
 * The kernel of the notebook (or console) in focus: the sidebar and the status bar ask the
 * server for that kernel's cluster (`?kernel=ID`; the kernel announces it, see
 * kernel_ext/announce.py). Keeps the last one when focus moves to a widget without a kernel
 * (the sidebar itself, a file browser), as a user expects.
 */
export class KernelFocus {
  constructor(shell: { currentWidget: Widget | null; currentChanged?: ISignal<unknown, unknown> }) {
    this._shell = shell;
    shell.currentChanged?.connect(() => this._follow(), this);
    this._follow();
  }

  /** The kernel id in focus ('' when no notebook has been focused yet). */
  get kernelId(): string {
    return this._kernelId;
  }

  get changed(): ISignal<this, string> {
    return this._changed;
  }

  /** `path` with `kernel=ID` added when a kernel is in focus. */
  withKernel(path: string): string {
    if (!this._kernelId) {
      return path;
    }
    const sep = path.includes('?') ? '&' : '?';
    return `${path}${sep}kernel=${encodeURIComponent(this._kernelId)}`;
  }

  private _follow(): void {
    const widget = this._shell.currentWidget as ISessionWidget | null;
    const context = widget?.sessionContext;
    if (!context) {
      return;
    }
    if (this._context !== context) {
      this._context?.kernelChanged?.disconnect(this._update, this);
      this._context = context;
      context.kernelChanged?.connect(this._update, this);
    }
    this._update();
  }

  private _update(): void {
    const id = this._context?.session?.kernel?.id ?? '';
    if (id && id !== this._kernelId) {
      this._kernelId = id;
      this._changed.emit(id);
    }
  }

  private _shell: { currentWidget: Widget | null; currentChanged?: ISignal<unknown, unknown> };
  private _context: ISessionWidget['sessionContext'] | null = null;
  private _kernelId = '';
  private _changed = new Signal<this, string>(this);
}
