import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { JSONExt, JSONObject, Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import {
  FORMAT,
  FRONTEND_TARGET,
  IFrontendMessage,
  IHello,
  INotebookMetadata,
  IPanelUpdate,
  is,
  KERNEL_TARGET,
  METADATA_KEY
} from './protocol';

export type Context = NotebookPanel['context'];

/**
 * A message as JSON: every message of the protocol is (its schema says so),
 * though TypeScript cannot tell from the generated interfaces.
 */
function asJSON(message: IFrontendMessage | INotebookMetadata): JSONObject {
  return message as unknown as JSONObject;
}

/**
 * Links one notebook document to its kernel: tells the kernel which notebook
 * it serves (and the history stored in it), and stores what the kernel sends
 * back into the notebook metadata. The chat panel talks to the kernel through
 * it too: `messageReceived` carries the kernel's `panel_*` messages.
 */
export class NotebookLink {
  constructor(readonly context: Context) {
    const session = context.sessionContext;
    session.kernelChanged.connect(this.onKernelChanged, this);
    session.statusChanged.connect(this.onStatusChanged, this);
    context.pathChanged.connect(this.onPathChanged, this);
    context.disposed.connect(this.dispose, this);
    void Promise.all([context.ready, session.ready]).then(() => {
      this.attach(session.session?.kernel ?? null);
    });
  }

  dispose(): void {
    this.attach(null);
    this.isDisposed = true;
    this._disposed.emit();
    Signal.clearData(this);
  }

  /** The kernel's messages for the chat panel (`type` starting with `panel_`). */
  get messageReceived(): ISignal<NotebookLink, IPanelUpdate> {
    return this._messageReceived;
  }

  /** Emitted when the kernel changes, restarts, or a comm opens or closes. */
  get connectionChanged(): ISignal<NotebookLink, void> {
    return this._connectionChanged;
  }

  get disposed(): ISignal<NotebookLink, void> {
    return this._disposed;
  }

  /** The kernel this notebook runs on now, if any. */
  get currentKernel(): Kernel.IKernelConnection | null {
    return this.kernel;
  }

  /** Whether a comm to the kernel's lmchat is open (or being opened). */
  get connected(): boolean {
    return this.comms.size > 0;
  }

  /** Send `data` to the kernel's lmchat; false when no comm is open. */
  post(data: IFrontendMessage): boolean {
    // One comm only: a request sent on two would be carried out twice.
    const newest = [...this.comms].pop();
    if (!newest) {
      return false;
    }
    this.send(newest, data);
    return true;
  }

  private hello(): IHello {
    return {
      type: 'hello',
      format: FORMAT,
      notebook_path: this.context.localPath,
      metadata: this.context.model.getMetadata(METADATA_KEY) ?? null
    };
  }

  private onKernelChanged(
    _: unknown,
    args: { newValue: Kernel.IKernelConnection | null }
  ): void {
    this.attach(args.newValue);
  }

  private onStatusChanged(_: unknown, status: Kernel.Status): void {
    if (status !== 'restarting' && status !== 'autorestarting') {
      return;
    }
    // The connection disposes every comm as the kernel restarts. Open a new one
    // once it has done so: it queues the message until the new kernel is up.
    this.comms.clear();
    this._connectionChanged.emit();
    if (!this.reopening) {
      this.reopening = true;
      setTimeout(() => {
        this.reopening = false;
        void this.openComm();
      }, 0);
    }
  }

  private onPathChanged(): void {
    this.sendAll({ type: 'path', notebook_path: this.context.localPath });
  }

  /** Switch to a new kernel (or none), dropping the comms of the old one. */
  private attach(kernel: Kernel.IKernelConnection | null): void {
    if (kernel === this.kernel) {
      return;
    }
    for (const comm of this.comms) {
      try {
        comm.close();
      } catch {
        // Already closed with its kernel.
      }
    }
    this.comms.clear();
    if (this.kernel && !this.kernel.isDisposed) {
      this.kernel.removeCommTarget(FRONTEND_TARGET, this.onFrontendComm);
    }
    this.kernel = kernel;
    if (kernel) {
      kernel.registerCommTarget(FRONTEND_TARGET, this.onFrontendComm);
      void this.openComm();
    }
    this._connectionChanged.emit();
  }

  /** Open a comm to the kernel's `lmchat` target; fails quietly without one. */
  private async openComm(): Promise<void> {
    const kernel = this.kernel;
    await this.context.ready;
    if (!kernel || kernel !== this.kernel || kernel.isDisposed) {
      return;
    }
    let comm: Kernel.IComm | null = null;
    try {
      comm = kernel.createComm(KERNEL_TARGET);
      this.bind(comm);
      await comm.open(asJSON(this.hello())).done;
    } catch {
      // The kernel went away meanwhile. (A kernel without lmchat closes the comm.)
      if (comm) {
        this.comms.delete(comm);
        this._connectionChanged.emit();
      }
    }
  }

  /** The kernel loaded lmchat after the notebook opened and asks for us. */
  private onFrontendComm = (comm: Kernel.IComm): void => {
    this.bind(comm);
    void this.context.ready.then(() => this.send(comm, this.hello()));
  };

  private bind(comm: Kernel.IComm): void {
    this.comms.add(comm);
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) =>
      this.onMessage(comm, msg.content.data);
    comm.onClose = () => {
      this.comms.delete(comm);
      this._connectionChanged.emit();
    };
  }

  private onMessage(comm: Kernel.IComm, data: unknown): void {
    // A kernel of another lmchat version, or anything else on the comm: checked, never trusted.
    if (!is('KernelMessage', data)) {
      console.warn('lmchat: ignoring a malformed comm message', data);
      return;
    }
    switch (data.type) {
      case 'request_hello':
        this.send(comm, this.hello());
        break;
      case 'metadata':
        this.setMetadata(data.value);
        break;
      case 'strip':
        // `%chat strip`: the notebook is to be shared without its chats.
        if (this.context.model.getMetadata(METADATA_KEY) !== undefined) {
          this.context.model.deleteMetadata(METADATA_KEY);
        }
        break;
      default:
        this._messageReceived.emit(data);
    }
  }

  /** Store the kernel's history in the notebook; the notebook turns dirty. */
  private setMetadata(value: INotebookMetadata): void {
    const model = this.context.model;
    const json = asJSON(value);
    // JSONExt.deepEqual throws on undefined: compare only with a value that is there.
    const current = model.getMetadata(METADATA_KEY);
    if (current === undefined || !JSONExt.deepEqual(current, json)) {
      model.setMetadata(METADATA_KEY, JSONExt.deepCopy(json));
    }
  }

  private send(comm: Kernel.IComm, message: IFrontendMessage): void {
    if (comm.isDisposed) {
      this.comms.delete(comm);
      return;
    }
    try {
      comm.send(asJSON(message));
    } catch {
      this.comms.delete(comm);
    }
  }

  private sendAll(data: IFrontendMessage): void {
    for (const comm of [...this.comms]) {
      this.send(comm, data);
    }
  }

  isDisposed = false;
  private kernel: Kernel.IKernelConnection | null = null;
  private comms = new Set<Kernel.IComm>();
  private reopening = false;
  private _messageReceived = new Signal<NotebookLink, IPanelUpdate>(this);
  private _connectionChanged = new Signal<NotebookLink, void>(this);
  private _disposed = new Signal<NotebookLink, void>(this);
}

/** The link of every open notebook, for the chat panel. */
export class NotebookLinks {
  /** The link of `context`, made on first use. */
  linkFor(context: Context): NotebookLink {
    let link = this.links.get(context);
    if (!link) {
      link = new NotebookLink(context);
      this.links.set(context, link);
    }
    return link;
  }

  private links = new WeakMap<Context, NotebookLink>();
}

/** The token of the notebook links (provided by the metadata plugin). */
export const INotebookLinks = new Token<NotebookLinks>(
  'lmchat-jupyter:INotebookLinks',
  "The comm between each notebook and its kernel's lmchat."
);
