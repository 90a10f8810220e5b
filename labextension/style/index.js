import '@jupyter/chat/style/index.css';
import './base.css';
