import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { JSONExt, JSONObject, Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

/** Comm target the kernel registers when `%load_ext lmchat` runs. */
const KERNEL_TARGET = 'lmchat';
/** Comm target registered here, so a kernel loading lmchat late can reach us. */
const FRONTEND_TARGET = 'lmchat.frontend';
/** Notebook metadata key holding the chat history. */
const METADATA_KEY = 'lmchat';
/** Version of the hello/metadata protocol and of the metadata payload. */
const FORMAT = 1;

export type Context = NotebookPanel['context'];

export function isPlainObject(value: unknown): value is JSONObject {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    Object.getPrototypeOf(value) === Object.prototype
  );
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
  get messageReceived(): ISignal<NotebookLink, JSONObject> {
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
  post(data: JSONObject): boolean {
    // One comm only: a request sent on two would be carried out twice.
    const newest = [...this.comms].pop();
    if (!newest) {
      return false;
    }
    this.send(newest, data);
    return true;
  }

  private hello(): JSONObject {
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
      await comm.open(this.hello()).done;
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
    const type = isPlainObject(data) ? data.type : undefined;
    if (type === 'request_hello') {
      this.send(comm, this.hello());
    } else if (type === 'metadata') {
      this.setMetadata((data as JSONObject).value);
    } else if (type === 'strip') {
      // `%chat strip`: the notebook is to be shared without its chats.
      if (this.context.model.getMetadata(METADATA_KEY) !== undefined) {
        this.context.model.deleteMetadata(METADATA_KEY);
      }
    } else if (typeof type === 'string' && type.startsWith('panel_')) {
      this._messageReceived.emit(data as JSONObject);
    } else {
      console.warn('lmchat: ignoring unknown comm message', data);
    }
  }

  /** Store the kernel's history in the notebook; the notebook turns dirty. */
  private setMetadata(value: unknown): void {
    const model = this.context.model;
    if (!isPlainObject(value) || value.format !== FORMAT) {
      console.warn('lmchat: ignoring invalid notebook metadata', value);
    } else {
      // JSONExt.deepEqual throws on undefined: compare only with a value that is there.
      const current = model.getMetadata(METADATA_KEY);
      if (current === undefined || !JSONExt.deepEqual(current, value)) {
        model.setMetadata(METADATA_KEY, JSONExt.deepCopy(value));
      }
    }
  }

  private send(comm: Kernel.IComm, data: JSONObject): void {
    if (comm.isDisposed) {
      this.comms.delete(comm);
      return;
    }
    try {
      comm.send(data);
    } catch {
      this.comms.delete(comm);
    }
  }

  private sendAll(data: JSONObject): void {
    for (const comm of [...this.comms]) {
      this.send(comm, data);
    }
  }

  isDisposed = false;
  private kernel: Kernel.IKernelConnection | null = null;
  private comms = new Set<Kernel.IComm>();
  private reopening = false;
  private _messageReceived = new Signal<NotebookLink, JSONObject>(this);
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
  'The comm between each notebook and its kernel\'s lmchat.'
);

