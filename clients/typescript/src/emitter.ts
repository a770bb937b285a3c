/** A small typed event emitter: `on` returns the function that removes the listener. */

export type EventMap = { [event: string]: (...args: any[]) => void };

export class Emitter<Events extends EventMap> {
  #listeners = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Adds a listener called at most once. */
  once<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    const wrapped = ((...args: Parameters<Events[E]>) => {
      this.off(event, wrapped);
      listener(...args);
    }) as Events[E];
    return this.on(event, wrapped);
  }

  off<E extends keyof Events>(event: E, listener: Events[E]): void {
    this.#listeners.get(event)?.delete(listener);
  }

  removeAllListeners(event?: keyof Events): void {
    if (event === undefined) this.#listeners.clear();
    else this.#listeners.delete(event);
  }

  listenerCount(event: keyof Events): number {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /**
   * Calls every listener of `event`. A listener that throws does not stop the others, nor the
   * client's state machine: the exception is reported on `queueMicrotask` so it still surfaces.
   */
  protected emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const l of [...set]) {
      try {
        l(...args);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
