import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IThemeManager } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { Context, INotebookLinks, NotebookLinks } from './link';
// Both are needed as the plugins activate: the panel is added to the sidebar,
// and each notebook opened is watched for stale widgets from its first moment.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { ChatPanel } from './panel/widget';
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { watchStaleChatWidgets } from './stale_widgets';

const linksPlugin: JupyterFrontEndPlugin<NotebookLinks> = {
  id: 'lmchat-jupyter:plugin',
  description: 'Keeps lmchat chat history in the notebook metadata.',
  autoStart: true,
  requires: [INotebookTracker],
  provides: INotebookLinks,
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker) => {
    // Several views of one notebook share a context: link each context once.
    const links = new NotebookLinks();
    const track = (panel: NotebookPanel) => {
      links.linkFor(panel.context);
      watchStaleChatWidgets(panel);
    };
    tracker.forEach(track);
    tracker.widgetAdded.connect((_, panel) => track(panel));
    return links;
  }
};

/**
 * The chat panel in the right sidebar: the conversation of the current
 * notebook's kernel. Only tokens that both JupyterLab 4 and Notebook 7 provide
 * are required, so that it activates in both.
 */
const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: 'lmchat-jupyter:chat-panel',
  description: "A sidebar chat on the current notebook's lmchat conversation.",
  autoStart: true,
  requires: [INotebookTracker, INotebookLinks, IRenderMimeRegistry],
  optional: [IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    links: NotebookLinks,
    rendermime: IRenderMimeRegistry,
    themeManager: IThemeManager | null
  ) => {
    const panel = new ChatPanel({
      app,
      tracker,
      rendermime,
      themeManager,
      linkFor: (context: Context) => links.linkFor(context)
    });
    app.shell.add(panel, 'right', { rank: 1000 });
  }
};

export default [linksPlugin, panelPlugin];
