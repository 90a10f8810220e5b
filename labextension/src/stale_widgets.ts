import type { ICodeCellModel } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel } from '@jupyterlab/services';

import { CHAT_WIDGET_MIME, is } from './protocol';

const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
/** ipywidgets' comm target: one comm per widget model alive in the kernel. */
const WIDGET_TARGET = 'jupyter.widget';
/** What a chat widget output without its own text says instead. */
const STALE_TEXT =
  'This chat widget belonged to a previous kernel: run this cell again.';

function plainText(value: unknown): string | null {
  if (typeof value === 'string') {
    return value;
  }
  return Array.isArray(value) ? value.join('') : null;
}

/**
 * Replace each chat widget output (the kernel marks them with
 * CHAT_WIDGET_MIME) whose widget the kernel no longer has (it belonged to a
 * previous kernel) with the widget's own text, which says to run the cell
 * again. Left alone, ipywidgets would show "Error displaying widget: model not
 * found" there.
 */
export async function retireStaleChatWidgets(
  panel: NotebookPanel
): Promise<void> {
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel || panel.isDisposed) {
    return;
  }
  let alive: Set<string>;
  try {
    const reply = await kernel.requestCommInfo({ target_name: WIDGET_TARGET });
    if (reply.content.status !== 'ok') {
      return;
    }
    alive = new Set(Object.keys(reply.content.comms));
  } catch {
    return; // no answer: better a widget error than a live widget replaced
  }
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== 'code') {
      continue;
    }
    const outputs = (cell.model as ICodeCellModel).outputs;
    for (let i = 0; i < outputs.length; i++) {
      const data = outputs.get(i).data;
      const view = data[WIDGET_MIME] as { model_id?: unknown } | undefined;
      if (
        !view ||
        typeof view.model_id !== 'string' ||
        !is('ChatWidgetMarker', data[CHAT_WIDGET_MIME]) ||
        alive.has(view.model_id)
      ) {
        continue;
      }
      outputs.set(i, {
        output_type: 'display_data',
        data: { 'text/plain': plainText(data['text/plain']) ?? STALE_TEXT },
        metadata: {}
      });
    }
  }
}

/** Retire stale chat widgets when the notebook opens and after each kernel start. */
export function watchStaleChatWidgets(panel: NotebookPanel): void {
  const session = panel.sessionContext;
  const check = (): void => {
    void Promise.all([panel.context.ready, session.ready]).then(() =>
      retireStaleChatWidgets(panel)
    );
  };
  let restarting = false;
  session.statusChanged.connect((_: unknown, status: Kernel.Status) => {
    if (status === 'restarting' || status === 'autorestarting') {
      restarting = true;
    } else if (status === 'idle' && restarting) {
      restarting = false;
      check();
    }
  });
  session.kernelChanged.connect(check);
  check();
}
