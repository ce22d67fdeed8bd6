import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';

import { KernelFocus } from './focus';
import { OrreryPanel, PANEL_ID, orreryIcon } from './panel';
import { OrreryStatus } from './statusbar';

namespace CommandIDs {
  /** Open (reveal) the Orrery sidebar. */
  export const openDashboard = 'orrery:open-dashboard';
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
    if (palette) {
      palette.addItem({ command: CommandIDs.openDashboard, category: 'Orrery' });
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
