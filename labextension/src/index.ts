import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IFrame, MainAreaWidget } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { IStatusBar } from '@jupyterlab/statusbar';

import { KernelFocus } from './focus';
import { OrreryPanel, PANEL_ID, orreryIcon } from './panel';
import { OrreryStatus } from './statusbar';

namespace CommandIDs {
  /** Open (reveal) the Orrery sidebar. */
  export const openDashboard = 'orrery:open-dashboard';
  /** The cluster's full web UI, proxied by the server extension, in a main-area tab. */
  export const openWebUI = 'orrery:open-web-ui';
}

/**
 * The Orrery sidebar, its status-bar item and the "Orrery: Open dashboard" command.
 * Everything else is optional, so the panel loads in any JupyterLab 4 shell.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'orrery-lab:plugin',
  description: 'Live view of the Orrery cluster: nodes, tasks (with Cancel), actors, objects; CPU and store use.',
  autoStart: true,
  optional: [ICommandPalette, IStatusBar, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null
  ) => {
    // The sidebar and the status bar show the cluster of the notebook in focus.
    const focus = new KernelFocus(app.shell as any);
    const panel = new OrreryPanel(focus);
    app.shell.add(panel, 'left', { rank: 900 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    app.commands.addCommand(CommandIDs.openDashboard, {
      label: 'Orrery: Open dashboard',
      caption: 'Show the Orrery sidebar (nodes, tasks, actors, objects)',
      icon: orreryIcon,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    let webUI: MainAreaWidget<IFrame> | null = null;
    app.commands.addCommand(CommandIDs.openWebUI, {
      label: 'Orrery: Open the cluster web UI in a tab',
      caption: 'Jobs with their logs, tasks with a timeline, actors, objects, metrics',
      icon: orreryIcon,
      execute: () => {
        if (!webUI || webUI.isDisposed) {
          const frame = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin', 'allow-downloads'] });
          frame.url = URLExt.join(PageConfig.getBaseUrl(), 'orrery', 'dashboard') + '/';
          webUI = new MainAreaWidget({ content: frame });
          webUI.id = 'orrery-web-ui';
          webUI.title.label = 'Orrery dashboard';
          webUI.title.icon = orreryIcon;
          webUI.title.closable = true;
          app.shell.add(webUI, 'main');
        }
        app.shell.activateById(webUI.id);
      }
    });
    panel.openDashboard = () => void app.commands.execute(CommandIDs.openWebUI);
    if (palette) {
      palette.addItem({ command: CommandIDs.openDashboard, category: 'Orrery' });
      palette.addItem({ command: CommandIDs.openWebUI, category: 'Orrery' });
    }

    if (statusBar) {
      statusBar.registerStatusItem('orrery-lab:status', {
        item: new OrreryStatus(focus),
        align: 'left',
        rank: 500
      });
    }
  }
};

export default plugin;
