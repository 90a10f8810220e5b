import {
  AbstractChatContext,
  AbstractChatModel,
  IChatContext,
  IChatModel,
  IMessageContent,
  INewMessage,
  IUser
} from '@jupyter/chat';
import { ISignal, Signal } from '@lumino/signaling';

import { IPanelMessage, IPanelRequest, IPanelState } from '../protocol';

/** A panel request without its `type` and `name` (the conversation shown), which the panel adds. */
export type PanelAction = Without<IPanelRequest, 'type' | 'name'>;
/** `Omit` for each type of a union. */
type Without<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** What the model needs from the notebook's link to its kernel. */
export interface IKernelRequests {
  /** Send a panel request on the conversation shown; false without lmchat. */
  request(action: PanelAction): boolean;
  /** Interrupt the kernel: the way to stop an answer a `%%chat` cell is generating. */
  interrupt(): void;
  /** Whether the kernel is running a cell (it reads no comm message until the cell ends). */
  busy(): boolean;
}

export const USER: IUser = {
  username: 'lmchat-user',
  display_name: 'You',
  initials: 'Y',
  color: 'var(--jp-brand-color1)'
};
export const ASSISTANT: IUser = {
  username: 'lmchat-assistant',
  display_name: 'Assistant',
  initials: 'A',
  bot: true,
  color: 'var(--jp-warn-color1)'
};
/** Id of the answer being generated, until the kernel gives it its own. */
const STREAM_ID = 'lmchat-stream';

/** What a message's footer shows: the kernel's message, and whether it is the last answer. */
declare module '@jupyter/chat' {
  interface IMessageMetadata {
    lmchat?: IPanelMessage & { last_answer?: boolean; streaming?: boolean };
  }
}

class Context extends AbstractChatContext {
  get users(): IUser[] {
    return [USER, ASSISTANT];
  }
}

/**
 * One lmchat conversation of one kernel as a @jupyter/chat model: the kernel
 * owns the messages; this mirrors each `panel_state` and turns the chat's
 * actions (send, edit, stop, regenerate) into panel requests.
 */
export class KernelChatModel extends AbstractChatModel {
  constructor(
    private readonly kernel: IKernelRequests,
    options: IChatModel.IOptions
  ) {
    super(options);
  }

  get user(): IUser {
    return USER;
  }

  /** The last state the kernel sent, or null before the first one. */
  get state(): IPanelState | null {
    return this._state;
  }

  get stateChanged(): ISignal<KernelChatModel, IPanelState | null> {
    return this._stateChanged;
  }

  /** The last error the kernel reported for a request of this panel. */
  get error(): string {
    return this._error;
  }

  set error(value: string) {
    this._error = value;
    this._stateChanged.emit(this._state);
  }

  sendMessage(message: INewMessage): boolean {
    const text = message.body;
    if (!text.trim()) {
      return false;
    }
    this.error = '';
    return this.kernel.request({ action: 'send', text });
  }

  /** Edit and resend a user message: the conversation goes back to it. */
  updateMessage(id: string, message: IMessageContent): boolean {
    const text = typeof message.body === 'string' ? message.body : '';
    if (!text.trim()) {
      return false;
    }
    this.error = '';
    return this.kernel.request({ action: 'edit', id, text });
  }

  /** How the panel's turns answer from now on (the kernel keeps it, and says so in its next state). */
  setOptions(options: { temperature?: number; max_tokens?: number }): boolean {
    this.error = '';
    return this.kernel.request({ action: 'options', ...options });
  }

  regenerate(): void {
    this.error = '';
    this.kernel.request({ action: 'regenerate' });
  }

  stop(): void {
    const state = this._state;
    if (state && state.generating && !state.panel_turn && this.kernel.busy()) {
      // A %%chat cell holds the kernel: only an interrupt reaches it.
      this.kernel.interrupt();
    }
    // The panel's and the widget's turns run beside the kernel's main thread: they read this.
    this.kernel.request({ action: 'stop' });
  }

  createChatContext(): IChatContext {
    return new Context({ model: this });
  }

  /** Show `state`: the kernel's messages, and the answer being generated. */
  applyState(state: IPanelState): void {
    this._state = state;
    const rows = state.messages.filter(
      m => m.role === 'user' || m.role === 'assistant'
    );
    let lastAnswer = -1;
    rows.forEach((m, i) => {
      if (m.role === 'assistant') {
        lastAnswer = i;
      }
    });
    const contents = rows.map((m, i) =>
      this.toContent(m, i === lastAnswer && !state.generating)
    );
    if (state.generating) {
      contents.push(this.streamContent(state.partial ?? ''));
    }
    this.replaceAll(contents);
    this.updateWriters(
      state.generating ? [{ user: ASSISTANT, messageID: STREAM_ID }] : []
    );
    this._stateChanged.emit(state);
  }

  /** The answer so far of the turn in progress. */
  applyStream(text: string): void {
    const last = this.messages[this.messages.length - 1];
    if (last && last.id === STREAM_ID) {
      last.update({ body: text || '…' });
      return;
    }
    this.messagesInserted(this.messages.length, [this.streamContent(text)]);
    this.updateWriters([{ user: ASSISTANT, messageID: STREAM_ID }]);
  }

  private toContent(m: IPanelMessage, lastAnswer: boolean): IMessageContent {
    const known = typeof m.time === 'number' && m.time > 0;
    return {
      type: 'msg',
      id: m.id,
      body: m.content,
      sender: m.role === 'user' ? USER : ASSISTANT,
      // A message saved without its time shows none (see AnswerStats), not the time it was loaded.
      time: known ? (m.time as number) : 0,
      metadata: { lmchat: { ...m, last_answer: lastAnswer } }
    };
  }

  private streamContent(text: string): IMessageContent {
    return {
      type: 'msg',
      id: STREAM_ID,
      body: text || '…',
      sender: ASSISTANT,
      time: Date.now() / 1000,
      metadata: {
        lmchat: {
          id: STREAM_ID,
          role: 'assistant',
          content: text,
          streaming: true
        }
      }
    };
  }

  /** Replace the list, keeping the messages that did not change (no re-render). */
  private replaceAll(contents: IMessageContent[]): void {
    const old = this.messages;
    let same = 0;
    while (
      same < old.length &&
      same < contents.length &&
      old[same].id === contents[same].id &&
      old[same].body === contents[same].body &&
      JSON.stringify(old[same].metadata) ===
        JSON.stringify(contents[same].metadata)
    ) {
      same++;
    }
    if (same < old.length) {
      this.messagesDeleted(same, old.length - same);
    }
    if (same < contents.length) {
      this.messagesInserted(same, contents.slice(same));
    }
  }

  private _state: IPanelState | null = null;
  private _error = '';
  private _stateChanged = new Signal<KernelChatModel, IPanelState | null>(this);
}
