import { IRenderMime, IRenderMimeRegistry } from '@jupyterlab/rendermime';

/** Attributes by which an element makes the browser fetch a URL as soon as it is in the page. */
const FETCHING = [
  'src',
  'srcset',
  'poster',
  'background',
  'data',
  'lowsrc',
  'dynsrc'
];

/**
 * JupyterLab's sanitizer, then no image: a message must never make the reader's
 * browser contact a server. An `<img>` (from Markdown or HTML) becomes its alt
 * text and its URL, as text; other elements lose the attributes and styles that
 * would fetch something.
 */
class NoImagesSanitizer implements IRenderMime.ISanitizer {
  constructor(private readonly base: IRenderMime.ISanitizer) {}

  get allowNamedProperties(): boolean | undefined {
    return this.base.allowNamedProperties;
  }

  get allowCommandLinker(): boolean | undefined {
    return this.base.allowCommandLinker;
  }

  getAutolink(): boolean {
    return this.base.getAutolink?.() ?? true;
  }

  sanitize(dirty: string, options?: IRenderMime.ISanitizerOptions): string {
    return withoutImages(this.base.sanitize(dirty, options));
  }
}

/** `html` with every image shown as text and nothing left that loads a URL by itself. */
export function withoutImages(html: string): string {
  // A parsed document that is not displayed fetches nothing.
  const doc = new DOMParser().parseFromString(html, 'text/html');
  for (const img of Array.from(doc.body.querySelectorAll('img'))) {
    const alt = img.getAttribute('alt') ?? '';
    const url = img.getAttribute('src') ?? '';
    const text = doc.createElement('span');
    text.className = 'lmchat-panel-image';
    text.title = 'Images are not loaded in the chat panel';
    text.textContent = `[image${alt ? `: ${alt}` : ''}]${url ? ` ${url}` : ''}`;
    img.replaceWith(text);
  }
  for (const el of Array.from(
    doc.body.querySelectorAll(
      'picture, source, video, audio, track, object, embed, iframe, link'
    )
  )) {
    el.replaceWith(...Array.from(el.childNodes));
  }
  for (const el of Array.from(doc.body.querySelectorAll('*'))) {
    for (const attr of FETCHING) {
      el.removeAttribute(attr);
    }
    if (/url\s*\(|image-set|@import/i.test(el.getAttribute('style') ?? '')) {
      el.removeAttribute('style');
    }
  }
  return doc.body.innerHTML;
}

/** `rendermime`, rendering as before but without images. */
export function noImages(rendermime: IRenderMimeRegistry): IRenderMimeRegistry {
  return rendermime.clone({
    sanitizer: new NoImagesSanitizer(rendermime.sanitizer)
  });
}
