import {
  IMessageFooterRegistry,
  MessageFooterRegistry,
  MessageFooterSectionProps,
  TooltippedIconButton
} from '@jupyter/chat';
import {
  checkIcon,
  copyIcon,
  LabIcon,
  refreshIcon
} from '@jupyterlab/ui-components';
import React from 'react';

import { KernelChatModel } from './model';

const h = React.createElement;

/** How long "Copied" shows after a copy. */
const COPIED_MS = 2000;

/** What the marker says for each way an answer can end early. */
const ENDINGS: Record<string, string> = {
  stopped: 'stopped',
  interrupted: 'stopped (interrupted)',
  length: 'cut at max tokens'
};

/** The answer's numbers: tokens, speed and time, as the magic's stats line gives them. */
export function statsText(
  tokens?: number,
  rate?: number,
  seconds?: number
): string {
  const parts: string[] = [];
  if (typeof tokens === 'number') {
    parts.push(`${tokens} tokens`);
  }
  if (typeof rate === 'number' && rate > 0) {
    parts.push(`${rate.toFixed(1)} tok/s`);
  }
  if (typeof seconds === 'number') {
    parts.push(`${seconds.toFixed(1)} s`);
  }
  return parts.join(' · ');
}

/** Left of each answer: its stats and, when it ended early, a marker saying how. */
function AnswerStats(props: MessageFooterSectionProps): React.ReactElement {
  const info = props.message.metadata?.lmchat;
  // A message saved without its time shows none (the stylesheet hides the header's, by this class).
  const className =
    info && !info.streaming && typeof info.time !== 'number'
      ? 'lmchat-panel-stats lmchat-panel-notime'
      : 'lmchat-panel-stats';
  if (!info || info.role !== 'assistant' || info.streaming) {
    return h('div', { className });
  }
  const ending = info.finish_reason ? ENDINGS[info.finish_reason] : undefined;
  const stats = statsText(info.tokens, info.tokens_per_second, info.seconds);
  return h(
    'div',
    { className, title: [ending, stats].filter(Boolean).join(' · ') },
    ending
      ? h(
          'span',
          {
            className: 'lmchat-panel-ending',
            'data-ending': info.finish_reason
          },
          ending
        )
      : null,
    h('span', { className: 'lmchat-panel-numbers' }, stats)
  );
}

/** Right of each message: copy it; the last answer can be generated again. */
function MessageActions(props: MessageFooterSectionProps): React.ReactElement {
  const info = props.message.metadata?.lmchat;
  if (!info || info.streaming) {
    return h('div');
  }
  const model = props.model as KernelChatModel;
  const [copied, setCopied] = React.useState<boolean | null>(null);
  React.useEffect(() => {
    if (copied === null) {
      return;
    }
    const timer = window.setTimeout(() => setCopied(null), COPIED_MS);
    return () => window.clearTimeout(timer);
  }, [copied]);
  const copy = () => {
    navigator.clipboard.writeText(info.content).then(
      () => setCopied(true),
      () => setCopied(false)
    );
  };
  const buttons = [
    iconButton(
      copied ? 'Copied' : 'Copy message',
      'lmchat-panel-copy',
      copied ? checkIcon : copyIcon,
      copy
    )
  ];
  if (info.last_answer) {
    buttons.push(
      iconButton('Answer again', 'lmchat-panel-regenerate', refreshIcon, () =>
        model.regenerate()
      )
    );
  }
  const feedback =
    copied === null
      ? null
      : h(
          'span',
          { className: 'lmchat-panel-copied', role: 'status' },
          copied ? 'Copied' : 'Copy failed'
        );
  return h('div', { className: 'lmchat-panel-actions' }, feedback, ...buttons);
}

/** A small icon button with a tooltip, as @jupyter/chat's own. */
export function iconButton(
  tooltip: string,
  className: string,
  icon: LabIcon,
  onClick: () => void,
  disabled = false,
  inputToolbar = false
): React.ReactElement {
  return h(TooltippedIconButton, {
    key: className,
    tooltip,
    onClick,
    disabled,
    inputToolbar,
    'aria-label': tooltip,
    buttonProps: { className },
    children: h(icon.react, { height: '16px', width: '16px' })
  });
}

/** The footer of every message in the panel. */
export function footerRegistry(): IMessageFooterRegistry {
  const registry = new MessageFooterRegistry();
  registry.addSection({ component: AnswerStats, position: 'left' });
  registry.addSection({ component: MessageActions, position: 'right' });
  return registry;
}
