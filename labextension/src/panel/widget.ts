import {
  ActiveCellManager,
  ChatWidget,
  IInputToolbarRegistry,
  InputToolbarRegistry
} from '@jupyter/chat';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { IThemeManager } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { LabIcon, stopIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';
import React from 'react';

import { Context, NotebookLink } from '../link';
import { IPanelState, IPanelUpdate } from '../protocol';
import { footerRegistry, iconButton } from './footer';
import { noImages } from './images';
import { KernelChatModel, PanelAction } from './model';

const LOAD_CODE = '%load_ext lmchat';
/** The message box's hint (@jupyter/chat's own speaks of mentions, which this chat has none of). */
const PLACEHOLDER = 'Message the notebook’s model';
/** How near the end (px) the messages must be scrolled for the panel to follow a growing answer. */
const FOLLOW_SLACK = 40;

const chatIcon = new LabIcon({
  name: 'lmchat-jupyter:chat',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M4 4h16v11H7l-3 3z"/></svg>'
});

/** Stop: ends the answer being generated (the panel's own, or a %%chat cell's by interrupting). */
function StopButton(
  props: InputToolbarRegistry.IToolbarItemProps
): React.ReactElement {
  const model = props.chatModel as KernelChatModel | undefined;
  const [generating, setGenerating] = React.useState(
    !!model?.state?.generating
  );
  React.useEffect(() => {
    if (!model) {
      return;
    }
    const changed = () => setGenerating(!!model.state?.generating);
    model.stateChanged.connect(changed);
    changed();
    return () => {
      model.stateChanged.disconnect(changed);
    };
  }, [model]);
  if (props.edit) {
    return React.createElement(React.Fragment);
  }
  return iconButton(
    'Stop the answer',
    'lmchat-panel-stop',
    stopIcon,
    () => model?.stop(),
    !generating,
    true
  );
}

function inputToolbar(): IInputToolbarRegistry {
  const registry = InputToolbarRegistry.defaultToolbarRegistry();
  registry.hide('attach'); // the kernel's model reads text only
  registry.addItem('stop', { element: StopButton, position: 90 });
  return registry;
}

/** One notebook's chat: its model, its view and the conversation it shows. */
class NotebookChat {
  constructor(
    readonly link: NotebookLink,
    options: ChatPanel.IOptions,
    activeCellManager: ActiveCellManager
  ) {
    this.model = new KernelChatModel(
      {
        request: action => this.request(action),
        interrupt: () => void link.currentKernel?.interrupt(),
        busy: () => link.currentKernel?.status === 'busy'
      },
      {
        config: {
          sendWithShiftEnter: false,
          stackMessages: false,
          unreadNotifications: false,
          enableCodeToolbar: true
        },
        activeCellManager,
        commands: options.app.commands
      }
    );
    this.view = new ChatWidget({
      model: this.model,
      rmRegistry: noImages(options.rendermime),
      themeManager: options.themeManager,
      inputToolbarRegistry: inputToolbar(),
      messageFooterRegistry: footerRegistry(),
      area: 'sidebar'
    });
    link.messageReceived.connect(this.onMessage, this);
    link.connectionChanged.connect(this.onConnection, this);
    this.kernel = link.currentKernel;
    // The user's scrolling decides whether the panel follows; scroll events do not bubble, hence capture.
    this.view.node.addEventListener('scroll', this.onScroll, true);
    this.observer.observe(this.view.node, {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
      attributeFilter: ['placeholder']
    });
    // The kernel follows the conversation for the panel from now on (and says whether lmchat is loaded).
    link.post({ type: 'panel', action: 'sync' });
  }

  /** The conversation shown: null until the kernel says which one `%%chat` uses. */
  name: string | null = null;
  /** Whether this notebook's kernel has lmchat loaded (it answered on the comm). */
  loaded = false;
  readonly model: KernelChatModel;
  readonly view: ChatWidget;

  request(action: PanelAction): boolean {
    if (
      action.action === 'send' ||
      action.action === 'regenerate' ||
      action.action === 'edit'
    ) {
      this.following = true; // a turn the user starts is shown as it comes
    }
    const sent = this.link.post({
      type: 'panel',
      ...action,
      ...(this.name ? { name: this.name } : {})
    });
    if (!sent) {
      this.model.error = `lmchat is not loaded in this kernel: run ${LOAD_CODE} first.`;
    }
    return sent;
  }

  pick(name: string): void {
    if (name !== this.name) {
      this.name = name;
      this.model.error = '';
      this.request({ action: 'sync' });
    }
  }

  /** Run `%load_ext lmchat` in the kernel, without a cell and without output. */
  load(): void {
    this.link.currentKernel?.requestExecute({
      code: LOAD_CODE,
      silent: true,
      store_history: false
    });
  }

  dispose(): void {
    this.observer.disconnect();
    this.view.node.removeEventListener('scroll', this.onScroll, true);
    this.link.messageReceived.disconnect(this.onMessage, this);
    this.link.connectionChanged.disconnect(this.onConnection, this);
    this.view.dispose();
    this.model.dispose();
  }

  private onMessage(_: NotebookLink, data: IPanelUpdate): void {
    const wasLoaded = this.loaded;
    this.loaded = true;
    if (data.type === 'panel_state') {
      const state = data;
      if (this.name === null) {
        this.name = state.name;
      }
      if (state.name === this.name) {
        this.model.applyState(state);
      } else if (this.model.state) {
        // Another conversation changed: the picker learns its name.
        this.model.applyState({ ...this.model.state, names: state.names });
      }
      if (!wasLoaded) {
        // lmchat was loaded (or the kernel restarted): have the kernel follow the conversation.
        this.request({ action: 'sync' });
      }
    } else if (data.type === 'panel_stream' && data.name === this.name) {
      this.model.applyStream(data.text);
    } else if (data.type === 'panel_error' && data.name === this.name) {
      this.model.error = data.text;
    }
    if (!wasLoaded) {
      this.changed();
    }
  }

  private onConnection(): void {
    const kernel = this.link.currentKernel;
    const loaded = this.loaded && this.link.connected && kernel === this.kernel;
    this.kernel = kernel;
    this.loaded = loaded;
    this.changed();
  }

  /** The element that scrolls the messages. */
  private get scroller(): HTMLElement | null {
    return this.view.node.querySelector(
      '[id^="jupyter-chat-scroll-container-"]'
    );
  }

  private onScroll = (event: Event): void => {
    const scroller = this.scroller;
    if (scroller && event.target === scroller) {
      this.following =
        scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <=
        FOLLOW_SLACK;
    }
  };

  /** The chat changed its DOM: keep the newest text in view while following, and lmchat's hint. */
  private onMutation = (): void => {
    for (const box of Array.from(
      this.view.node.querySelectorAll<HTMLTextAreaElement>(
        'textarea[placeholder]'
      )
    )) {
      if (box.placeholder.includes('@ to mention')) {
        box.placeholder = PLACEHOLDER;
      }
    }
    const scroller = this.scroller;
    if (this.following && scroller) {
      scroller.scrollTop = scroller.scrollHeight;
    }
  };

  /** Whether the panel keeps the end of the conversation in view as it grows. */
  private following = true;
  private observer = new MutationObserver(this.onMutation);

  /** Called when `loaded` or the kernel changes. */
  changed: () => void = () => undefined;
  private kernel: unknown;
}

/**
 * The sidebar panel: a line saying which conversation of which notebook it
 * shows (with a picker when there are several), and that conversation as a
 * @jupyter/chat chat. It follows the current notebook.
 */
export class ChatPanel extends Panel {
  constructor(private readonly options: ChatPanel.IOptions) {
    super();
    this.id = 'lmchat-panel';
    this.addClass('lmchat-panel');
    this.title.icon = chatIcon;
    this.title.caption = 'lmchat: the notebook kernel’s chat';
    this.header.addClass('lmchat-panel-header');
    this.header.node.innerHTML =
      '<div class="lmchat-panel-title"><span class="lmchat-panel-notebook"></span>' +
      '<select class="lmchat-panel-picker" aria-label="Conversation"></select></div>' +
      '<div class="lmchat-panel-status"></div>' +
      '<div class="lmchat-panel-options" title="How the panel’s answers are generated: as the last %%chat cell asked, until changed here">' +
      '<label>temperature <input class="lmchat-panel-temperature" type="number" min="0" max="2" step="0.1"></label>' +
      '<label>max tokens <input class="lmchat-panel-max-tokens" type="number" min="1" max="32768" step="1"></label></div>' +
      '<div class="lmchat-panel-error" role="alert"></div>' +
      '<div class="lmchat-panel-unloaded"><p>lmchat is not loaded in this notebook’s kernel.</p>' +
      `<button class="jp-Button jp-mod-styled jp-mod-accept lmchat-panel-load">Load lmchat (${LOAD_CODE})</button></div>`;
    this.addWidget(this.header);
    this.activeCellManager = new ActiveCellManager({
      tracker: options.tracker,
      shell: options.app.shell
    });
    this.picker.addEventListener('change', () =>
      this.current?.pick(this.picker.value)
    );
    this.find('.lmchat-panel-load').addEventListener('click', () =>
      this.current?.load()
    );
    for (const [selector, key] of [
      ['.lmchat-panel-temperature', 'temperature'],
      ['.lmchat-panel-max-tokens', 'max_tokens']
    ] as const) {
      const input = this.find(selector) as HTMLInputElement;
      input.addEventListener('change', () => {
        // The kernel checks the value, and says in the panel what it takes.
        if (input.value !== '' && !input.validity.badInput) {
          this.current?.model.setOptions({ [key]: Number(input.value) });
        }
      });
      input.addEventListener('blur', () => this.render()); // the value in use
    }
    options.tracker.currentChanged.connect(this.follow, this);
  }

  /** A closed panel follows nothing: its kernels send it nothing as they generate. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.follow();
  }

  /** The chat of the current notebook, if any. */
  get current(): NotebookChat | null {
    return this._current;
  }

  /** Show the chat of the notebook that is current now. */
  private follow(): void {
    if (!this.isVisible) {
      return;
    }
    const panel = this.options.tracker.currentWidget;
    const chat = panel ? this.chatFor(panel.context) : null;
    if (chat === this._current) {
      return;
    }
    if (this._current) {
      this._current.model.stateChanged.disconnect(this.render, this);
      this._current.view.parent = null;
    }
    this._current = chat;
    if (chat) {
      chat.model.stateChanged.connect(this.render, this);
      this.addWidget(chat.view);
    }
    this.render();
  }

  private chatFor(context: Context): NotebookChat {
    let chat = this.chats.get(context);
    if (!chat) {
      const made = new NotebookChat(
        this.options.linkFor(context),
        this.options,
        this.activeCellManager
      );
      made.changed = () => {
        if (made === this._current) {
          this.render();
        }
      };
      context.disposed.connect(() => {
        this.chats.delete(context);
        if (made === this._current) {
          this._current = null;
          this.follow();
        }
        made.dispose();
      });
      this.chats.set(context, made);
      chat = made;
    }
    return chat;
  }

  private render(): void {
    const chat = this._current;
    const notebook = this.find('.lmchat-panel-notebook');
    const status = this.find('.lmchat-panel-status');
    const error = this.find('.lmchat-panel-error');
    const unloaded = this.find('.lmchat-panel-unloaded');
    const state = chat?.model.state ?? null;
    notebook.textContent = chat
      ? (chat.link.context.localPath.split('/').pop() ?? '')
      : 'No notebook';
    const names = state ? state.names : [];
    this.picker.replaceChildren(
      ...names.map(n => {
        const option = document.createElement('option');
        option.value = option.textContent = n;
        return option;
      })
    );
    this.picker.value = chat?.name ?? '';
    this.picker.style.display = names.length > 1 ? '' : 'none';
    const hasKernel = !!chat?.link.currentKernel;
    const loaded = !!chat?.loaded;
    unloaded.style.display = chat && hasKernel && !loaded ? '' : 'none';
    if (chat) {
      chat.view.setHidden(!loaded);
    }
    status.textContent = !chat
      ? 'Open a notebook to chat with its kernel.'
      : !hasKernel
        ? 'This notebook has no kernel: start one to chat.'
        : !loaded
          ? ''
          : describe(state, chat.name);
    const options = this.find('.lmchat-panel-options');
    options.style.display =
      chat && hasKernel && loaded && state?.options ? '' : 'none';
    if (state?.options) {
      this.setInput('.lmchat-panel-temperature', state.options.temperature);
      this.setInput('.lmchat-panel-max-tokens', state.options.max_tokens);
    }
    error.textContent = chat?.model.error ?? '';
    error.style.display = chat?.model.error ? '' : 'none';
  }

  /** Show `value` in an input, unless the user is typing there. */
  private setInput(selector: string, value: number): void {
    const input = this.find(selector) as HTMLInputElement;
    if (document.activeElement !== input) {
      input.value = String(value);
    }
  }

  private find(selector: string): HTMLElement {
    return this.header.node.querySelector(selector) as HTMLElement;
  }

  private get picker(): HTMLSelectElement {
    return this.find('.lmchat-panel-picker') as HTMLSelectElement;
  }

  private header = new Widget();
  private chats = new Map<Context, NotebookChat>();
  private _current: NotebookChat | null = null;
  private activeCellManager: ActiveCellManager;
}

/** The status line: model, context use, and whether an answer is under way. */
function describe(state: IPanelState | null, name: string | null): string {
  if (state?.waiting) {
    return `Conversation ${name ?? ''}: the notebook's history, read again at the next message.`;
  }
  if (!state || state.model === null) {
    return `Conversation ${name ?? ''}: no messages yet. Write one below, or run a %%chat cell.`;
  }
  const parts = [state.model];
  if (typeof state.tokens === 'number' && typeof state.n_ctx === 'number') {
    parts.push(
      `${state.tokens.toLocaleString('en')} / ${state.n_ctx.toLocaleString('en')} tokens`
    );
  }
  if (state.generating) {
    parts.push('generating…');
  }
  return parts.join(' · ');
}

export namespace ChatPanel {
  export interface IOptions {
    app: JupyterFrontEnd;
    tracker: INotebookTracker;
    rendermime: IRenderMimeRegistry;
    themeManager: IThemeManager | null;
    linkFor: (context: Context) => NotebookLink;
  }
}
